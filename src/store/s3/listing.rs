//! Listings: a bucket's objects (ListObjectsV2, page by page with
//! continuation tokens) and the buckets (ListBuckets).

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use rusty_s3::actions::ListObjectsV2;
use rusty_s3::{Bucket, S3Action};

use super::{check_bucket, error_code, S3Store, SIGNATURE_TTL};
use crate::store::{unavailable, ObjectMeta, StoreResult};

/// Keys per page (S3's maximum).
const LIST_PAGE: usize = 1000;

impl S3Store {
    /// Every object of `bucket` whose key starts with `prefix`, in key
    /// order; a missing bucket is empty.
    pub(super) async fn list_objects(
        &self,
        bucket: &Bucket,
        prefix: &str,
    ) -> StoreResult<Vec<ObjectMeta>> {
        let what = format!("list {}", bucket.name());
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let answer = self
                .call(&what, || {
                    let mut action = bucket.list_objects_v2(Some(&self.credentials));
                    action.with_max_keys(LIST_PAGE);
                    if !prefix.is_empty() {
                        action.with_prefix(prefix);
                    }
                    if let Some(t) = &token {
                        action.with_continuation_token(t.as_str());
                    }
                    self.http.get(action.sign(SIGNATURE_TTL))
                })
                .await?;
            match answer.status {
                s if s.is_success() => {}
                StatusCode::NOT_FOUND
                    if error_code(&answer.body).as_deref() == Some("NoSuchBucket") =>
                {
                    return Ok(out)
                }
                _ => return Err(unavailable(format!("{what}: {}", answer.describe()))),
            }
            let text = String::from_utf8_lossy(&answer.body);
            let page = ListObjectsV2::parse_response(&text)
                .map_err(|e| unavailable(format!("{what}: unreadable listing: {e}")))?;
            for c in page.contents {
                out.push(ObjectMeta {
                    last_modified: parse_listed_time(&c.last_modified),
                    name: c.key,
                    size: c.size,
                });
            }
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// The buckets whose name starts with `prefix`, in name order. Only
    /// valid bucket names count (Swift's s3api also shows the `+segments`
    /// containers of multipart uploads).
    pub(super) async fn list_buckets(&self, prefix: &str) -> StoreResult<Vec<String>> {
        let what = "list buckets";
        let answer = self
            .call(what, || {
                // ListBuckets has no rusty-s3 action: sign the endpoint itself.
                let url = rusty_s3::signing::sign(
                    &jiff::Timestamp::now(),
                    rusty_s3::Method::Get,
                    self.endpoint.clone(),
                    self.credentials.key(),
                    self.credentials.secret(),
                    None,
                    &self.region,
                    SIGNATURE_TTL.as_secs(),
                    std::iter::empty(),
                    std::iter::empty(),
                );
                self.http.get(url)
            })
            .await?;
        if !answer.status.is_success() {
            return Err(unavailable(format!("{what}: {}", answer.describe())));
        }
        let text = String::from_utf8_lossy(&answer.body);
        let mut names = bucket_names(&text)
            .map_err(|e| unavailable(format!("{what}: unreadable listing: {e}")))?;
        names.retain(|n| n.starts_with(prefix) && check_bucket(n).is_ok());
        names.sort();
        Ok(names)
    }
}

/// The `<Bucket><Name>` entries of a ListAllMyBucketsResult.
fn bucket_names(xml: &str) -> Result<Vec<String>, roxmltree::Error> {
    let doc = roxmltree::Document::parse(xml)?;
    Ok(doc
        .descendants()
        .filter(|n| n.tag_name().name() == "Bucket")
        .filter_map(|b| {
            b.children()
                .find(|n| n.tag_name().name() == "Name")
                .and_then(|n| n.text())
                .map(str::to_string)
        })
        .collect())
}

/// S3 listing times: ISO 8601 in UTC (`2026-12-04T19:52:09.000Z`).
fn parse_listed_time(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_listing_and_times() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListAllMyBucketsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
<Owner><ID>x</ID></Owner><Buckets>
<Bucket><Name>ekko-b</Name><CreationDate>2026-12-04T19:52:09.000Z</CreationDate></Bucket>
<Bucket><Name>ekko-a</Name></Bucket></Buckets></ListAllMyBucketsResult>"#;
        assert_eq!(bucket_names(xml).unwrap(), vec!["ekko-b", "ekko-a"]);
        assert_eq!(
            parse_listed_time("2026-12-04T19:52:09.123Z").to_rfc3339(),
            "2026-12-04T19:52:09.123+00:00"
        );
        assert_eq!(parse_listed_time("garbage"), DateTime::<Utc>::default());
    }
}
