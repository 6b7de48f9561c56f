//! The collector's one error type for its HTTP routes (see [`commerce_web::service_error!`]).

commerce_web::service_error!(
    /// Every way a collector request can fail.
    pub CollectorError,
    "commerce-collector"
);
