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
            let unreadable = |e: String| unavailable(format!("{what}: unreadable listing: {e}"));
            // A listing taken as whole when it is not would make GC and
            // rebuild miss objects: a truncated page must name its next.
            let truncated = listing_truncated(&text).map_err(unreadable)?;
            let page =
                ListObjectsV2::parse_response(&text).map_err(|e| unreadable(e.to_string()))?;
            for c in page.contents {
                out.push(ObjectMeta {
                    last_modified: parse_listed_time(&c.last_modified).map_err(unreadable)?,
                    name: c.key,
                    size: c.size,
                });
            }
            match (truncated, page.next_continuation_token) {
                (true, Some(t)) if !t.is_empty() && token.as_deref() != Some(t.as_str()) => {
                    token = Some(t)
                }
                (true, _) => {
                    return Err(unreadable(
                        "a truncated page without a new continuation token".into(),
                    ))
                }
                (false, _) => return Ok(out),
            }
        }
    }

    /// The buckets whose name starts with `prefix`, in name order. Only
    /// valid bucket names count (Swift's s3api also shows the `+segments`
    /// containers of multipart uploads).
    pub(super) async fn list_buckets(&self, prefix: &str) -> StoreResult<Vec<String>> {
        let what = "list buckets";
        let mut names = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let answer = self
                .call(what, || {
                    // ListBuckets has no rusty-s3 action: sign the endpoint
                    // itself (AWS pages it with continuation tokens).
                    let query = token.as_deref().map(|t| ("continuation-token", t));
                    let url = rusty_s3::signing::sign(
                        &jiff::Timestamp::now(),
                        rusty_s3::Method::Get,
                        self.endpoint.clone(),
                        self.credentials.key(),
                        self.credentials.secret(),
                        None,
                        &self.region,
                        SIGNATURE_TTL.as_secs(),
                        query.into_iter(),
                        std::iter::empty(),
                    );
                    self.http.get(url)
                })
                .await?;
            if !answer.status.is_success() {
                return Err(unavailable(format!("{what}: {}", answer.describe())));
            }
            let text = String::from_utf8_lossy(&answer.body);
            let page = bucket_names(&text)
                .map_err(|e| unavailable(format!("{what}: unreadable listing: {e}")))?;
            names.extend(page.names);
            match page.next {
                Some(t) if token.as_deref() != Some(t.as_str()) => token = Some(t),
                Some(_) => {
                    return Err(unavailable(format!(
                        "{what}: the same continuation token twice"
                    )))
                }
                None => break,
            }
        }
        // Swift's s3api (and older S3 implementations) stop at 10,000
        // names without a token: a short list would hide projects from
        // rebuild and scrub.
        if token.is_none() && names.len() >= BUCKET_LISTING_CAP {
            return Err(unavailable(format!(
                "{what}: {} names, the most a listing without continuation gives: it may be incomplete",
                names.len()
            )));
        }
        names.retain(|n| n.starts_with(prefix) && check_bucket(n).is_ok());
        names.sort();
        Ok(names)
    }
}

/// The most names a bucket listing without continuation tokens returns.
const BUCKET_LISTING_CAP: usize = 10_000;

/// One page of a bucket listing.
struct BucketPage {
    names: Vec<String>,
    next: Option<String>,
}

/// The `<Bucket><Name>` entries of a ListAllMyBucketsResult, and its
/// continuation token. Any other document (a bucket's object listing, when
/// the endpoint is a bucket's URL) is refused.
fn bucket_names(xml: &str) -> Result<BucketPage, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    if root.tag_name().name() != "ListAllMyBucketsResult" {
        return Err(format!(
            "a {} document, not ListAllMyBucketsResult",
            root.tag_name().name()
        ));
    }
    let child = |n: roxmltree::Node, name: &str| {
        n.children()
            .find(|c| c.tag_name().name() == name)
            .and_then(|c| c.text())
            .map(str::to_string)
    };
    Ok(BucketPage {
        names: root
            .descendants()
            .filter(|n| n.tag_name().name() == "Bucket")
            .filter_map(|b| child(b, "Name"))
            .collect(),
        next: child(root, "ContinuationToken").filter(|t| !t.is_empty()),
    })
}

/// Whether an object listing says it is truncated (`<IsTruncated>`).
fn listing_truncated(xml: &str) -> Result<bool, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    if root.tag_name().name() != "ListBucketResult" {
        return Err(format!("a {} document", root.tag_name().name()));
    }
    Ok(root
        .children()
        .find(|c| c.tag_name().name() == "IsTruncated")
        .and_then(|c| c.text())
        .is_some_and(|t| t.trim() == "true"))
}

/// S3 listing times: ISO 8601 in UTC (`2026-12-04T19:52:09.000Z`). One
/// that cannot be read fails the listing: a made-up old time would make
/// the orphan sweep take a new object for an old one.
fn parse_listed_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("object time {s:?}: {e}"))
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
        let page = bucket_names(xml).unwrap();
        assert_eq!(page.names, vec!["ekko-b", "ekko-a"]);
        assert_eq!(page.next, None);
        let paged = xml.replace(
            "</Buckets>",
            "</Buckets><ContinuationToken>t2</ContinuationToken>",
        );
        assert_eq!(bucket_names(&paged).unwrap().next.as_deref(), Some("t2"));
        // A bucket's URL given as the endpoint answers an object listing.
        let objects =
            "<ListBucketResult><Name>b</Name><IsTruncated>false</IsTruncated></ListBucketResult>";
        assert!(bucket_names(objects).is_err());
        assert_eq!(
            parse_listed_time("2026-12-04T19:52:09.123Z")
                .unwrap()
                .to_rfc3339(),
            "2026-12-04T19:52:09.123+00:00"
        );
        assert!(parse_listed_time("garbage").is_err());
        assert!(parse_listed_time("2026-12-04T19:52:09").is_err());
    }

    #[test]
    fn a_truncated_object_listing_is_seen() {
        assert!(listing_truncated(
            "<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>"
        )
        .unwrap());
        assert!(!listing_truncated(
            "<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>"
        )
        .unwrap());
        assert!(listing_truncated("<Error><Code>x</Code></Error>").is_err());
    }
}
