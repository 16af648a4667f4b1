//! Minimal HTML pages and redirects. [`Page`] builds a valid HTML5 document whose every
//! piece of text goes through [`escape`]: there is no way to put unescaped text in one.
//! Every response carries `Cache-Control: no-store`, `Referrer-Policy: no-referrer` (a
//! callback URL holds an authorization code), `X-Content-Type-Options: nosniff` and a
//! restrictive `Content-Security-Policy` (no scripts, forms only to this origin).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

/// Escapes text for HTML element content and double- or single-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page being built: a title and paragraphs, all escaped.
#[derive(Debug, Clone)]
pub struct Page {
    title: String,
    body: String,
}

impl Page {
    /// A page whose `<title>` and `<h1>` are `title`.
    pub fn new(title: &str) -> Self {
        Self {
            title: escape(title),
            body: String::new(),
        }
    }

    /// Adds a paragraph of text.
    pub fn text(mut self, text: &str) -> Self {
        self.body.push_str("<p>");
        self.body.push_str(&escape(text));
        self.body.push_str("</p>\n");
        self
    }

    /// Adds a paragraph with an `id` (tests and the portal find it by that).
    pub fn text_with_id(mut self, id: &str, text: &str) -> Self {
        self.body
            .push_str(&format!("<p id=\"{}\">{}</p>\n", escape(id), escape(text)));
        self
    }

    /// Adds a form with one button that POSTs to `action`.
    pub fn post_button(mut self, action: &str, label: &str) -> Self {
        self.body.push_str(&format!(
            "<form method=\"post\" action=\"{}\"><button type=\"submit\">{}</button></form>\n",
            escape(action),
            escape(label)
        ));
        self
    }

    /// Adds a link.
    pub fn link(mut self, href: &str, label: &str) -> Self {
        self.body.push_str(&format!(
            "<p><a href=\"{}\">{}</a></p>\n",
            escape(href),
            escape(label)
        ));
        self
    }

    /// The document.
    pub fn html(&self) -> String {
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{title}</title>\n</head>\n<body>\n<h1>{title}</h1>\n{body}</body>\n</html>\n",
            title = self.title,
            body = self.body
        )
    }

    /// The response with `status`.
    pub fn respond(&self, status: StatusCode) -> Response {
        secure_headers((status, Html(self.html())).into_response())
    }
}

/// A 302 to `location`.
pub(super) fn redirect(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(value) => {
            let mut response = StatusCode::FOUND.into_response();
            response.headers_mut().insert(header::LOCATION, value);
            secure_headers(response)
        }
        Err(_) => Page::new("Cannot redirect")
            .text("The sign-in address could not be built.")
            .respond(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

/// A 303 (See Other) to `location`: after a form's POST, or back to the portal.
pub fn see_other(location: &str) -> Response {
    let mut response = redirect(location);
    if response.status() == StatusCode::FOUND {
        *response.status_mut() = StatusCode::SEE_OTHER;
    }
    response
}

/// Adds the headers every response of the OAuth routes carries.
pub(super) fn secure_headers(response: Response) -> Response {
    secure_headers_with(
        response,
        HeaderValue::from_static("no-referrer"),
        HeaderValue::from_static(
            "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    )
}

/// `Cache-Control: no-store`, `X-Content-Type-Options: nosniff`, and this referrer
/// policy and Content-Security-Policy.
pub(super) fn secure_headers_with(
    mut response: Response,
    referrer_policy: HeaderValue,
    content_security_policy: HeaderValue,
) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, referrer_policy);
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CONTENT_SECURITY_POLICY, content_security_policy);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_is_escaped() {
        let html = Page::new("<t>")
            .text("a & <b> \"c\" 'd'")
            .text_with_id("x\"y", "z")
            .post_button("/u/\"><script>", "Un<pair>")
            .link("javascript:'", "<l>")
            .html();
        assert!(!html.contains("<script>"));
        assert!(!html.contains("<b>"));
        assert!(!html.contains("<t>"));
        assert!(html.contains("a &amp; &lt;b&gt; &quot;c&quot; &#39;d&#39;"));
        assert!(html.contains("<p id=\"x&quot;y\">z</p>"));
        assert!(html.starts_with("<!DOCTYPE html>"));
    }

    #[test]
    fn responses_carry_the_headers() {
        let r = redirect("https://login.example/x?a=1");
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(r.headers()[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        let r = redirect("bad\nheader");
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
