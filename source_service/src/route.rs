//! The routes the service answers, in one place for the handlers that
//! answer them (`http`) and the metrics labelled by them (`metrics`), so
//! that neither module needs the other.

use http_server::Request;

/// The routes the service knows; `Other` is every unknown path, so that
/// metrics labels stay bounded whatever clients ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Changes,
    Healthz,
    Metrics,
    OpenApi,
    Other,
}

impl Route {
    pub const ALL: [Route; 5] = [
        Route::Changes,
        Route::Healthz,
        Route::Metrics,
        Route::OpenApi,
        Route::Other,
    ];

    /// The route of a request.
    pub fn of(request: &Request) -> Route {
        let url = request.origin_form();
        Route::from_path(url.split_once('?').map_or(&*url, |(path, _)| path))
    }

    pub(crate) fn from_path(path: &str) -> Route {
        match path {
            "/users/changes" => Route::Changes,
            "/healthz" => Route::Healthz,
            "/metrics" => Route::Metrics,
            "/openapi.json" => Route::OpenApi,
            _ => Route::Other,
        }
    }

    /// The value of the `path` metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Route::Changes => "/users/changes",
            Route::Healthz => "/healthz",
            Route::Metrics => "/metrics",
            Route::OpenApi => "/openapi.json",
            Route::Other => "other",
        }
    }

    /// Position in `Route::ALL`.
    pub fn index(self) -> usize {
        self as usize
    }
}
