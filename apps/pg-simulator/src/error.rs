//! The simulator's one error type (see [`commerce_web::service_error!`]). A simulated
//! `GATEWAY_ERROR` 500 is a `Refused` answer, part of the gateway's behaviour, not a failure of
//! the simulator.

commerce_web::service_error!(
    /// Every way a simulator request can fail.
    pub SimError,
    "pg-simulator"
);
