//! A small router: match a request's method and path against patterns such as
//! `/api/converge/{task_id}`, with no allocation of handlers or boxing.
//!
//! ```
//! use lodge_sdk::router::Route;
//!
//! let route = Route::new("GET", "/api/converge/task_123");
//! if let Some(params) = route.matches("GET", "/api/converge/{task_id}") {
//!     assert_eq!(params.get("task_id"), Some("task_123"));
//! }
//! assert!(route.matches("POST", "/api/converge/{task_id}").is_none());
//! assert!(route.matches("GET", "/api/converge").is_none());
//! ```

/// Path parameters captured by a pattern.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// The value captured for `{name}`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A request's method and path, ready to match.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    method: &'a str,
    path: &'a str,
}

impl<'a> Route<'a> {
    /// A route for `method` and `path` (the query, if any, is ignored).
    pub fn new(method: &'a str, path: &'a str) -> Self {
        Self {
            method,
            path: path.split('?').next().unwrap_or(path),
        }
    }

    /// The route of `req`.
    pub fn of<B>(req: &'a crate::Request<B>) -> Self {
        Self::new(req.method().as_str(), req.uri().path())
    }

    /// `Some(params)` if the method is `method` (or `method` is `"*"`) and the
    /// path fits `pattern`, where `{name}` matches one non-empty segment and a
    /// trailing `{*name}` matches the rest.
    pub fn matches(&self, method: &str, pattern: &str) -> Option<Params> {
        if method != "*" && !method.eq_ignore_ascii_case(self.method) {
            return None;
        }
        let mut params = Params::default();
        let mut path = self
            .path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty());
        let mut pattern_segments = pattern
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .peekable();
        while let Some(expected) = pattern_segments.next() {
            if let Some(name) = expected
                .strip_prefix("{*")
                .and_then(|n| n.strip_suffix('}'))
            {
                let rest: Vec<&str> = path.by_ref().collect();
                params.pairs.push((name.to_owned(), rest.join("/")));
                return pattern_segments.peek().is_none().then_some(params);
            }
            let actual = path.next()?;
            match expected.strip_prefix('{').and_then(|n| n.strip_suffix('}')) {
                Some(name) => params.pairs.push((name.to_owned(), actual.to_owned())),
                None if expected == actual => {}
                None => return None,
            }
        }
        path.next().is_none().then_some(params)
    }
}

#[cfg(test)]
mod tests {
    use super::Route;

    #[test]
    fn patterns() {
        let r = Route::new("POST", "/chat/c1?x=1");
        assert!(
            r.matches("POST", "/chat/{id}")
                .is_some_and(|p| p.get("id") == Some("c1"))
        );
        assert!(r.matches("post", "/chat/{id}").is_some());
        assert!(r.matches("*", "/chat/{id}").is_some());
        assert!(r.matches("GET", "/chat/{id}").is_none());
        assert!(r.matches("POST", "/chat").is_none());
        assert!(r.matches("POST", "/chat/{id}/more").is_none());
        assert!(Route::new("GET", "/").matches("GET", "/").is_some());
        let files = Route::new("GET", "/static/css/site.css");
        assert_eq!(
            files
                .matches("GET", "/static/{*file}")
                .and_then(|p| p.get("file").map(str::to_owned)),
            Some("css/site.css".to_owned())
        );
    }
}
