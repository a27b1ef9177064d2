//! Multipart uploads: create, upload parts (each retried on its own),
//! complete or abort. Nothing is visible until CompleteMultipartUpload.

use bytes::Bytes;
use reqwest::StatusCode;
use rusty_s3::actions::CreateMultipartUpload;
use rusty_s3::{Bucket, S3Action};

use super::{error_code, S3Store, MAX_PARTS, SIGNATURE_TTL};
use crate::store::{unavailable, ObjectStore, StoreResult};

/// An upload in progress: where it goes and the parts sent so far.
pub(super) struct Upload {
    bucket: Bucket,
    name: String,
    id: String,
    etags: Vec<String>,
}

impl Upload {
    fn what(&self) -> String {
        format!("multipart upload of {}/{}", self.bucket.name(), self.name)
    }
}

impl S3Store {
    /// Begin an upload of at most `parts` parts.
    pub(super) async fn start_upload(
        &self,
        bucket: &Bucket,
        name: &str,
        parts: usize,
    ) -> StoreResult<Upload> {
        let what = format!("multipart upload of {}/{name}", bucket.name());
        if parts > MAX_PARTS {
            return Err(unavailable(format!(
                "{what}: more than {MAX_PARTS} parts of {} bytes ([s3] multipart_part_size)",
                self.part_size
            )));
        }
        for first in [true, false] {
            self.ensure_bucket(bucket).await?;
            let answer = self
                .call(&what, || {
                    let url = bucket
                        .create_multipart_upload(Some(&self.credentials), name)
                        .sign(SIGNATURE_TTL);
                    self.http.post(url).body(Bytes::new())
                })
                .await?;
            match answer.status {
                s if s.is_success() => {
                    let text = String::from_utf8_lossy(&answer.body);
                    let created = CreateMultipartUpload::parse_response(&text)
                        .map_err(|e| unavailable(format!("{what}: unreadable answer: {e}")))?;
                    tracing::debug!(bucket = bucket.name(), name, "multipart upload started");
                    return Ok(Upload {
                        bucket: bucket.clone(),
                        name: name.to_string(),
                        id: created.upload_id().to_string(),
                        etags: Vec::new(),
                    });
                }
                StatusCode::NOT_FOUND if first => self.forget_bucket(bucket.name()),
                _ => return Err(unavailable(format!("{what}: {}", answer.describe()))),
            }
        }
        Err(unavailable(format!(
            "{what}: the bucket keeps disappearing"
        )))
    }

    /// Send the next part.
    pub(super) async fn upload_part(&self, upload: &mut Upload, body: Bytes) -> StoreResult<()> {
        let number = upload.etags.len() + 1;
        let part = u16::try_from(number)
            .ok()
            .filter(|&n| usize::from(n) <= MAX_PARTS)
            .ok_or_else(|| {
                unavailable(format!("{}: more than {MAX_PARTS} parts", upload.what()))
            })?;
        let what = format!("{} (part {number})", upload.what());
        let answer = self
            .call(&what, || {
                let url = upload
                    .bucket
                    .upload_part(Some(&self.credentials), &upload.name, part, &upload.id)
                    .sign(SIGNATURE_TTL);
                self.http.put(url).body(body.clone())
            })
            .await?;
        let etag = answer
            .headers
            .get("ETag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match (answer.status.is_success(), etag) {
            (true, Some(etag)) => {
                upload.etags.push(etag);
                Ok(())
            }
            (true, None) => Err(unavailable(format!("{what}: no ETag in the answer"))),
            (false, _) => Err(unavailable(format!("{what}: {}", answer.describe()))),
        }
    }

    /// Make the object visible. S3 may answer 200 with an error document
    /// (the work takes time): that is a failure. A retry of a completion
    /// that did succeed finds the upload gone: the object of `size` bytes is
    /// then there.
    pub(super) async fn complete_upload(&self, upload: &Upload, size: u64) -> StoreResult<()> {
        let what = format!("complete {}", upload.what());
        let body = upload
            .bucket
            .complete_multipart_upload(
                Some(&self.credentials),
                &upload.name,
                &upload.id,
                upload.etags.iter().map(String::as_str),
            )
            .body();
        let answer = self
            .call(&what, || {
                let url = upload
                    .bucket
                    .complete_multipart_upload(
                        Some(&self.credentials),
                        &upload.name,
                        &upload.id,
                        std::iter::empty(),
                    )
                    .sign(SIGNATURE_TTL);
                self.http.post(url).body(body.clone())
            })
            .await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                self.abort_upload(upload).await;
                return Err(e);
            }
        };
        let failed = error_code(&answer.body);
        if answer.status.is_success() && failed.is_none() {
            return Ok(());
        }
        if failed.as_deref() == Some("NoSuchUpload") {
            let meta = self.head(upload.bucket.name(), &upload.name).await?;
            if meta.size == size {
                return Ok(());
            }
        }
        self.abort_upload(upload).await;
        Err(unavailable(format!("{what}: {}", answer.describe())))
    }

    /// Drop an upload's parts; best effort (a store keeps what an abort
    /// missed until its lifecycle rule for incomplete uploads removes it).
    pub(super) async fn abort_upload(&self, upload: &Upload) {
        let what = format!("abort {}", upload.what());
        let answer = self
            .call(&what, || {
                let url = upload
                    .bucket
                    .abort_multipart_upload(Some(&self.credentials), &upload.name, &upload.id)
                    .sign(SIGNATURE_TTL);
                self.http.delete(url)
            })
            .await;
        match answer {
            Ok(a) if a.status.is_success() || a.status == StatusCode::NOT_FOUND => {}
            Ok(a) => tracing::warn!(what, answer = a.describe(), "abort failed"),
            Err(e) => tracing::warn!(what, error = %e, "abort failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::s3::Answer;

    #[test]
    fn an_error_document_is_seen() {
        let answer = Answer {
            status: StatusCode::OK,
            headers: Default::default(),
            body: Bytes::from_static(b"<Error><Code>InternalError</Code></Error>"),
        };
        assert_eq!(error_code(&answer.body).as_deref(), Some("InternalError"));
        assert_eq!(answer.describe(), "S3 answered 200 OK (InternalError)");
    }
}
