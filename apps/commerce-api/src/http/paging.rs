//! Paged lists: one query shape (`page`, `size`) and one answer shape for every list route.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::http::error::{ApiError, ApiResult};

/// Largest page number accepted.
const MAX_PAGE: i64 = 10_000;
/// Largest page size accepted.
const MAX_SIZE: i64 = 100;
/// Deepest offset (`page × size`) accepted: deeper pages cost the database a scan of every row
/// before them. Lists that go deeper offer a cursor.
pub const MAX_OFFSET: i64 = 10_000;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    /// 0-based (default 0); `page × size` at most 10,000.
    page: Option<i64>,
    /// 1 ..= 100 (default 20).
    size: Option<i64>,
}

impl PageParams {
    /// The page and size, validated.
    pub fn parse(&self) -> ApiResult<(i64, i64)> {
        let mut errors = Vec::new();
        let parsed = page_and_size(self.page, self.size, &mut errors);
        if errors.is_empty() {
            Ok(parsed)
        } else {
            Err(ApiError::Validation(errors))
        }
    }
}

/// `page` and `size` with their defaults (0 and 20); each one out of range adds its error, for
/// routes whose query has more than paging.
pub fn page_and_size(
    page: Option<i64>,
    size: Option<i64>,
    errors: &mut Vec<commerce_web::FieldError>,
) -> (i64, i64) {
    let page = page.unwrap_or(0);
    let size = size.unwrap_or(20);
    if !(0..=MAX_PAGE).contains(&page) {
        errors.push(commerce_web::FieldError::new(
            "page",
            format!("must be 0..={MAX_PAGE}"),
        ));
    }
    if !(1..=MAX_SIZE).contains(&size) {
        errors.push(commerce_web::FieldError::new(
            "size",
            format!("must be 1..={MAX_SIZE}"),
        ));
    } else if (0..=MAX_PAGE).contains(&page) && page * size > MAX_OFFSET {
        errors.push(commerce_web::FieldError::new(
            "page",
            format!("page × size must be at most {MAX_OFFSET}; go deeper with `cursor` where a list offers it"),
        ));
    }
    (page, size)
}

/// One page of a list.
#[derive(Serialize, ToSchema)]
pub struct Page<T: ToSchema> {
    pub content: Vec<T>,
    pub page: i64,
    pub size: i64,
    pub total_elements: i64,
    pub total_pages: i64,
    /// Where the next page starts, for lists that offer keyset paging (`?cursor=`): absent on
    /// the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl<T: ToSchema> Page<T> {
    pub fn new(content: Vec<T>, page: i64, size: i64, total_elements: i64) -> Self {
        Self {
            content,
            page,
            size,
            total_elements,
            total_pages: (total_elements + size - 1) / size,
            next_cursor: None,
        }
    }
}
