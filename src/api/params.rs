//! Query parameters: decoding the raw query string, validating each known parameter, and the
//! pagination rules of WorkOS (`API.md` §4).
//!
//! The query is decoded by hand rather than by a deserializer, so that nothing a client sends
//! can make a request fail in an unplanned way: unknown parameters are ignored (as WorkOS
//! does), a known one that is repeated, too long, not UTF-8 or malformed is a 422 naming it.
//! An empty value (`after=`) counts as absent.

use super::error::{ApiError, FieldError};

/// Longest accepted value of a free-text parameter (`search`, `email`, `idp_id`, `domain`).
pub const MAX_TEXT: usize = 1024;
/// Longest accepted object id (WorkOS ids are about 40 characters).
pub const MAX_ID: usize = 128;
/// The page size when `limit` is absent, and the largest one.
pub const DEFAULT_LIMIT: i64 = 10;
/// The largest `limit`.
pub const MAX_LIMIT: i64 = 100;

/// Whether `text` has the shape of a WorkOS object id: ASCII letters, digits, `_` and `-`,
/// at most [`MAX_ID`] long. Anything else cannot name a stored object.
pub fn is_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_ID
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The known parameters of one request, decoded, with the errors found so far.
pub struct Params {
    found: Vec<(&'static str, String)>,
    errors: Vec<FieldError>,
}

impl Params {
    /// Decodes `raw` (the query string without `?`), keeping the parameters in `known`.
    pub fn parse(raw: Option<&str>, known: &[&'static str]) -> Params {
        let mut params = Params {
            found: Vec::new(),
            errors: Vec::new(),
        };
        for pair in raw.unwrap_or("").split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let Ok(key) = String::from_utf8(decode(key)) else {
                continue;
            };
            let Some(&field) = known.iter().find(|known| **known == key) else {
                continue;
            };
            if params.found.iter().any(|(seen, _)| *seen == field) {
                params.error(field, "duplicate");
                continue;
            }
            let Ok(value) = String::from_utf8(decode(value)) else {
                params.error(field, "invalid_encoding");
                continue;
            };
            if value.len() > MAX_TEXT {
                params.error(field, "too_long");
            } else if !value.is_empty() {
                params.found.push((field, value));
            }
        }
        params
    }

    /// Records an error about `field`.
    pub fn error(&mut self, field: &str, code: &'static str) {
        if !self.errors.iter().any(|error| error.field == field) {
            self.errors.push(FieldError {
                field: field.to_owned(),
                code,
            });
        }
    }

    /// The value of a free-text parameter.
    pub fn text(&self, field: &'static str) -> Option<String> {
        self.found
            .iter()
            .find(|(seen, _)| *seen == field)
            .map(|(_, value)| value.clone())
    }

    /// The value of a parameter that must be an object id.
    pub fn id(&mut self, field: &'static str) -> Option<String> {
        let value = self.text(field)?;
        if is_id(&value) {
            Some(value)
        } else {
            self.error(field, "invalid_id");
            None
        }
    }

    /// `limit`, `order`, `before` and `after`.
    pub fn page(&mut self) -> Page {
        let limit = match self.text("limit") {
            None => DEFAULT_LIMIT,
            Some(text) => match text.parse::<i64>() {
                Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => limit,
                Ok(_) => {
                    self.error("limit", "out_of_range");
                    DEFAULT_LIMIT
                }
                // Digits that overflow are out of range too.
                Err(_)
                    if text
                        .trim_start_matches('-')
                        .bytes()
                        .all(|b| b.is_ascii_digit()) =>
                {
                    self.error("limit", "out_of_range");
                    DEFAULT_LIMIT
                }
                Err(_) => {
                    self.error("limit", "invalid_integer");
                    DEFAULT_LIMIT
                }
            },
        };
        let order = match self.text("order").as_deref() {
            None | Some("desc") => Order::Desc,
            Some("asc") => Order::Asc,
            Some("normal") => Order::Normal,
            Some(_) => {
                self.error("order", "invalid_value");
                Order::Desc
            }
        };
        let before = self.id("before");
        let after = self.id("after");
        let cursor = match (before, after) {
            (Some(_), Some(_)) => {
                self.error("before", "conflict");
                None
            }
            (Some(id), None) => Some((CursorParam::Before, id)),
            (None, Some(id)) => Some((CursorParam::After, id)),
            (None, None) => None,
        };
        Page {
            limit,
            order,
            cursor,
        }
    }

    /// Exactly one of `a` and `b` (e.g. `directory` and `group`): neither is a 422 `required`
    /// on `a`, both a 422 `conflict` on `b`.
    pub fn one_of(&mut self, a: &'static str, b: &'static str) -> Option<Filter> {
        match (self.id(a), self.id(b)) {
            (Some(_), Some(_)) => {
                self.error(b, "conflict");
                None
            }
            (Some(id), None) => Some(Filter::First(id)),
            (None, Some(id)) => Some(Filter::Second(id)),
            (None, None) => {
                if !self.errors.iter().any(|e| e.field == a || e.field == b) {
                    self.error(a, "required");
                }
                None
            }
        }
    }

    /// `Err` with every error found, if any.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.errors))
        }
    }
}

/// Which of the two parameters of [`Params::one_of`] was given.
pub enum Filter {
    /// The first.
    First(String),
    /// The second.
    Second(String),
}

/// Percent-decoding as forms do (`+` is a space); a `%` not followed by two hex digits is kept.
fn decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    out
}

fn hex(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|digit| digit as u8)
}

/// `order`: how a list is sorted by `created_at` (then id), and which way cursors point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Oldest first; `after` = later records.
    Asc,
    /// Newest first (the default); `after` = older records.
    Desc,
    /// Newest first with reversed cursors: `before` = older records, `after` = newer.
    Normal,
}

/// Which cursor parameter was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorParam {
    /// `before`
    Before,
    /// `after`
    After,
}

/// One page's request: size, order and cursor.
#[derive(Debug, Clone)]
pub struct Page {
    /// 1–100.
    pub limit: i64,
    /// The order.
    pub order: Order,
    /// The cursor and its object id.
    pub cursor: Option<(CursorParam, String)>,
}

impl Page {
    /// Whether the listing is newest first.
    fn listing_descending(&self) -> bool {
        self.order != Order::Asc
    }

    /// Whether the cursor asks for the records past it in listing order (the next page), as
    /// opposed to those before it (the previous page).
    fn forward(&self) -> bool {
        matches!(
            (&self.cursor, self.order),
            (None, _)
                | (Some((CursorParam::After, _)), Order::Asc | Order::Desc)
                | (Some((CursorParam::Before, _)), Order::Normal)
        )
    }

    /// Whether the rows are read newest first (the listing order, or its reverse for a
    /// previous page; such a page is turned back into listing order by [`Page::finish`]).
    pub fn scan_descending(&self) -> bool {
        self.listing_descending() == self.forward()
    }

    /// Rows to read: one more than the page, to know whether there are more.
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }

    /// Turns the rows read (in scan order, up to [`Page::fetch`]) into the page in listing
    /// order and its `list_metadata` `(before, after)`, given each row's id.
    pub fn finish<T>(
        &self,
        mut rows: Vec<T>,
        id: impl Fn(&T) -> &str,
    ) -> (Vec<T>, Option<String>, Option<String>) {
        let more = rows.len() as i64 > self.limit;
        rows.truncate(self.limit as usize);
        let forward = self.forward();
        if !forward {
            rows.reverse();
        }
        let first = rows.first().map(|row| id(row).to_owned());
        let last = rows.last().map(|row| id(row).to_owned());
        // The id to continue with past the page (in listing order), and the one to go back
        // with: there is a next page if more rows were read forward, or if the page was read
        // backwards from a cursor; a previous one if read forward from a cursor, or if more
        // rows were read backwards.
        let has_cursor = self.cursor.is_some();
        let next = if (forward && more) || (!forward && has_cursor) {
            last
        } else {
            None
        };
        let previous = if (forward && has_cursor) || (!forward && more) {
            first
        } else {
            None
        };
        match self.order {
            Order::Asc | Order::Desc => (rows, previous, next),
            // Reversed cursors: `before` leads to the next (older) page.
            Order::Normal => (rows, next, previous),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(query: &str) -> Result<Page, ApiError> {
        let mut params = Params::parse(Some(query), &["limit", "order", "before", "after"]);
        let page = params.page();
        params.finish().map(|()| page)
    }

    fn codes(query: &str) -> Vec<(String, &'static str)> {
        match page(query) {
            Err(ApiError::Validation(errors)) => {
                errors.into_iter().map(|e| (e.field, e.code)).collect()
            }
            other => panic!("{query}: {other:?}"),
        }
    }

    #[test]
    fn defaults_and_unknown_parameters() {
        let page = page("foo=bar&%FF=%FF&limit=").unwrap();
        assert_eq!((page.limit, page.order), (10, Order::Desc));
        assert!(page.cursor.is_none());
    }

    #[test]
    fn bad_values_name_their_parameter() {
        assert_eq!(codes("limit=0"), [("limit".into(), "out_of_range")]);
        assert_eq!(codes("limit=101"), [("limit".into(), "out_of_range")]);
        assert_eq!(
            codes("limit=99999999999999999999999"),
            [("limit".into(), "out_of_range")]
        );
        assert_eq!(codes("limit=1.5"), [("limit".into(), "invalid_integer")]);
        assert_eq!(codes("order=sideways"), [("order".into(), "invalid_value")]);
        assert_eq!(
            codes("after=x%27%3B+DROP"),
            [("after".into(), "invalid_id")]
        );
        assert_eq!(codes("after=%FF"), [("after".into(), "invalid_encoding")]);
        assert_eq!(codes("limit=1&limit=2"), [("limit".into(), "duplicate")]);
        assert_eq!(codes("before=a&after=b"), [("before".into(), "conflict")]);
        let long = format!("after={}", "a".repeat(MAX_TEXT + 1));
        assert_eq!(codes(&long), [("after".into(), "too_long")]);
    }

    fn ids(
        page: &Page,
        rows: &[&'static str],
    ) -> (Vec<&'static str>, Option<String>, Option<String>) {
        page.finish(rows.to_vec(), |row| row)
    }

    #[test]
    fn cursors_follow_workos_semantics() {
        let first = page("limit=2").unwrap();
        assert!(first.scan_descending());
        assert_eq!(
            ids(&first, &["c", "b", "a"]),
            (vec!["c", "b"], None, Some("b".into()))
        );
        let next = page("limit=2&after=b").unwrap();
        assert!(next.scan_descending());
        assert_eq!(ids(&next, &["a"]), (vec!["a"], Some("a".into()), None));
        // `before` on desc reads ascending and serves the page newest first.
        let previous = page("limit=2&before=a").unwrap();
        assert!(!previous.scan_descending());
        assert_eq!(
            ids(&previous, &["b", "c"]),
            (vec!["c", "b"], None, Some("b".into()))
        );
        let asc = page("order=asc&limit=2&after=a").unwrap();
        assert!(!asc.scan_descending());
        // Normal: newest first, `before` goes to older records.
        let normal = page("order=normal&limit=2").unwrap();
        assert!(normal.scan_descending());
        assert_eq!(
            ids(&normal, &["c", "b", "a"]),
            (vec!["c", "b"], Some("b".into()), None)
        );
        let older = page("order=normal&limit=2&before=b").unwrap();
        assert!(older.scan_descending());
        assert_eq!(ids(&older, &["a"]), (vec!["a"], None, Some("a".into())));
        let newer = page("order=normal&limit=2&after=a").unwrap();
        assert!(!newer.scan_descending());
    }
}
