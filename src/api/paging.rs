//! Pagination of list calls, as the API-SIG describes it: `limit` (default
//! and maximum `[api] max_limit`), `marker` (the last item of the previous
//! page), `sort=created_at[:asc|:desc]`, and a `<collection>_links` entry
//! with `rel: next` when the page is full. The pages themselves are keyset
//! pages ([`Page`], read by the use cases).

use actix_web::HttpRequest;

use super::error::ApiError;
use super::{Link, State};
use crate::service::Page;

/// Check `limit` and `sort`; `newest_first` is the default order.
pub fn parse(
    limit: Option<i64>,
    marker: Option<String>,
    sort: Option<&str>,
    max: i64,
    newest_first: bool,
) -> Result<Page, ApiError> {
    let limit = match limit {
        None => max,
        Some(l) if (1..=max).contains(&l) => l,
        Some(l) => {
            return Err(ApiError::bad_request(format!(
                "limit {l} is out of range 1..{max}"
            )))
        }
    };
    let ascending = match sort {
        None | Some("created_at") => !newest_first,
        Some("created_at:desc") => false,
        Some("created_at:asc") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unsupported sort {other:?}: use created_at:asc or created_at:desc"
            )))
        }
    };
    Ok(Page {
        limit,
        marker,
        ascending,
    })
}

/// [`parse`] with the configured page size (`[api] max_limit`).
pub fn page_of(
    state: &State,
    limit: Option<i64>,
    marker: Option<String>,
    sort: Option<&str>,
    newest_first: bool,
) -> Result<Page, ApiError> {
    let max = state.ekko.config.api.max_limit as i64;
    parse(limit, marker, sort, max, newest_first)
}

/// The `next` link of a page of `len` items ending with `last_id`: the
/// same query with the marker moved on; `None` when the page is not full.
pub fn next_link(
    page: &Page,
    req: &HttpRequest,
    base: &str,
    len: usize,
    last_id: Option<&str>,
) -> Result<Option<[Link; 1]>, ApiError> {
    let Some(last) = last_id.filter(|_| len as i64 == page.limit) else {
        return Ok(None);
    };
    let mut next = url::Url::parse(&format!("{base}{}", req.path())).map_err(ApiError::internal)?;
    {
        let mut pairs = next.query_pairs_mut();
        for (k, v) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
            if k != "marker" {
                pairs.append_pair(&k, &v);
            }
        }
        pairs.append_pair("marker", last);
    }
    Ok(Some([Link {
        rel: "next",
        href: next.to_string(),
    }]))
}
