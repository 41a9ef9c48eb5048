//! The OpenAPI 3 document of the target's endpoints, served at
//! `GET /openapi.json`. It is hand-written JSON, embedded in the binary; a
//! unit test keeps it naming every path the router answers, and
//! `scripts/test.sh` runs schemathesis against a live target to keep every
//! response true to it.

/// The document, as served.
pub const TARGET: &str = include_str!("openapi.json");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_with_every_path() {
        let doc: serde_json::Value = serde_json::from_str(TARGET).expect("valid JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        for path in crate::web::http::PATHS {
            assert!(doc["paths"][path]["get"].is_object(), "{path}");
        }
        let unauthorized = &doc["paths"]["/rejections"]["get"]["responses"]["401"];
        assert!(unauthorized["headers"]["WWW-Authenticate"].is_object());
    }
}
