//! Access control lists in mosquitto's `acl_file` format: this module owns the ACL rules and
//! their matching, i.e. whether a client may publish to a topic, receive a message on it, or
//! subscribe to a filter. An existing mosquitto ACL file is accepted as it is, but for the
//! corner cases listed at the end.
//!
//! Threads: [`Acl::parse`] runs on the main thread when the configuration is loaded, and the
//! [`Acl`] is then shared read-only. [`Acl::for_client`] runs once per connection on the shard
//! that owns it, and the [`ClientAcl`] it returns is checked (on every PUBLISH, SUBSCRIBE and,
//! when it has deny rules, every delivery) only by that shard's thread. No I/O, no clock:
//! text in, decisions out.
//!
//! # Format
//!
//! UTF-8 text (a leading byte order mark is skipped), one directive a line (`\n` or `\r\n`).
//! Words are separated by blanks (spaces, tabs: any ASCII whitespace), and blanks around a line
//! are ignored.
//!
//! ```text
//! # A comment: blank lines and lines whose first non-blank character is '#' are ignored.
//! topic read public/#            <- before any `user` line: anonymous clients only
//! user alice smith               <- the username is the rest of the line, trimmed
//! topic alice/#                  <- no access word: readwrite
//! topic deny alice/secret/#
//! topic write my topic/with spaces
//! pattern readwrite devices/%c/# <- every client; %c is the client id, %u the username
//! pattern read users/%u/inbox
//! ```
//!
//! - `user <username>`: the `topic` lines that follow apply to clients with that username.
//!   Several sections for one username add up.
//! - `topic [read|write|readwrite|deny] <filter>`: a rule for the current section; `topic`
//!   lines before the first `user` line apply to clients without a username only.
//! - `pattern [read|write|readwrite|deny] <filter>`: a rule for every client, with or without a
//!   username, after substitution (see below).
//! - The access word is optional when the filter is a single word (then it is `readwrite`), as
//!   in mosquitto: after `topic` or `pattern`, one word is the filter, and more words are an
//!   access word followed by the filter (which may hold spaces). A lone access word
//!   (`topic read`) is refused as a missing filter; a topic named `read` is written
//!   `topic readwrite read`.
//! - Keywords and access words are lower case. Filters are checked as MQTT Topic Filters
//!   (§4.7.1); a `$share/` filter is refused, since a subscription to a shared filter is
//!   checked on the filter it shares.
//! - Anything else (an unknown keyword, a missing username or filter, an unknown access word,
//!   an invalid filter) makes [`Acl::parse`] fail with one line naming the line number, e.g.
//!   `line 7: unknown access "rw" (read, write, readwrite or deny)`.
//!
//! # Substitution
//!
//! In a `pattern` filter every `%c` becomes the client identifier and every `%u` the username,
//! in one left-to-right pass (a username holding `%c` is not substituted again). A pattern
//! holding `%u` never applies to a client without a username. A substitution is refused, and
//! the pattern then does not apply, when the value is empty, holds `+`, `#` or `/` (it would
//! widen the filter or reach into another client's levels), or would make the filter start
//! with `$` when the pattern does not (a client id `$SYS` must not turn `%c/#` into `$SYS/#`).
//! A refused *deny* pattern fails closed instead: that client is denied everything.
//!
//! # Checks
//!
//! Topic matching is MQTT's (§4.7): `+` is one level, `#` the rest including its parent
//! (`a/#` matches `a`), and a filter starting with `+` or `#` does not match a topic starting
//! with `$` ([MQTT-4.7.2-1]). A client's rules are its section's `topic` rules (the anonymous
//! section when it has no username) and every `pattern` that applies to it.
//!
//! - [`ClientAcl::allows_topic`]: denied if any deny rule's filter matches the topic;
//!   otherwise allowed if a rule granting the access (`read` / `readwrite` for
//!   [`Access::Read`], `write` / `readwrite` for [`Access::Write`]) matches it.
//! - [`ClientAcl::allows_subscribe`]: the filter (the inner filter of `$share/{group}/...`)
//!   is denied if it is *within* a deny rule's filter; otherwise allowed if it is within one
//!   rule granting read. "Within" means every topic the subscription can match is matched by
//!   the rule, decided level by level: a `#` in the rule covers the rest (including the
//!   parent: `a` is within `a/#`), a `+` in the rule covers any level but `#`, a literal level
//!   covers only itself, and a subscription starting with a literal `$` level is not within a
//!   rule starting with `+` or `#`. So `a/b/+`, `a/#` and `a` are within `a/#`; `a/b` and `a/+`
//!   (not `a/#`) are within `a/+`; only `a/b` is within `a/b`; `#` is within `#` only. The test
//!   is against one rule at a time: a subscription covered only by several rules together is
//!   refused.
//! - A subscription that merely overlaps a deny rule (`a/#` against `deny a/secret`) is allowed;
//!   when [`ClientAcl::has_deny`] says the client has deny rules, each message delivered to it
//!   must be checked with `allows_topic(topic, Access::Read)`.
//! - No rules allow nothing: an empty file, or a client no section or pattern applies to, is
//!   allowed nothing. Whether an ACL applies at all is the caller's decision.
//!
//! Differences from mosquitto: a deny rule wins over every allow rule (in mosquitto an allow in
//! the user's own section beats a deny pattern); subscriptions are checked against read rules
//! (mosquitto 2 lets every subscription through and checks deliveries); comment lines may be
//! indented; `/`, empty values and a leading `$` are refused in substitutions (mosquitto 2
//! refuses only `+` and `#`); a lone access word (`topic read`, for mosquitto a readwrite rule
//! on the topic `read`) and a `$share/` rule filter are errors.

use std::collections::HashMap;

use crate::protocol::topic::{matches, validate_topic_filter};

/// What a client wants to do with a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Receive messages published to the topic (a subscription, or a delivery).
    Read,
    /// Publish to the topic.
    Write,
}

/// What one rule grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Grant {
    /// The access word of a `topic` or `pattern` line.
    fn from_word(word: &str) -> Option<Self> {
        match word {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            "readwrite" => Some(Self::ReadWrite),
            "deny" => Some(Self::Deny),
            _ => None,
        }
    }
}

/// One `topic` or `pattern` line: a filter (for a pattern, before substitution) and its grant.
#[derive(Clone, Debug)]
struct Rule {
    grant: Grant,
    filter: Box<str>,
}

/// A parsed ACL file.
#[derive(Debug, Default, Clone)]
pub struct Acl {
    /// `topic` lines before the first `user` line.
    anonymous: Vec<Rule>,
    /// `topic` lines by the username of their section.
    users: HashMap<String, Vec<Rule>>,
    /// `pattern` lines, unsubstituted.
    patterns: Vec<Rule>,
}

impl Acl {
    /// Parses the file's text.
    ///
    /// # Errors
    ///
    /// One line naming the 1-based line number and what is wrong with it, e.g.
    /// `line 7: unknown access "rw" (read, write, readwrite or deny)`.
    pub fn parse(text: &str) -> Result<Acl, String> {
        let mut acl = Acl::default();
        let mut user: Option<&str> = None;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim_matches(|c: char| c.is_ascii_whitespace());
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = split_word(line);
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(format!("line {n}: missing username after \"user\""));
                    }
                    user = Some(rest);
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(keyword, rest).map_err(|e| format!("line {n}: {e}"))?;
                    match (keyword, user) {
                        ("pattern", _) => acl.patterns.push(rule),
                        (_, None) => acl.anonymous.push(rule),
                        (_, Some(u)) => acl.users.entry(u.to_owned()).or_default().push(rule),
                    }
                }
                _ => {
                    return Err(format!(
                        "line {n}: unknown keyword {keyword:?} (user, topic or pattern)"
                    ));
                }
            }
        }
        Ok(acl)
    }

    /// The rules that apply to one client, with %c/%u substituted: computed once per connection.
    ///
    /// `client_id` is the identifier the session runs under (the one the server assigned when
    /// the client sent none); `username` is `None` for a client that sent no username.
    pub fn for_client(&self, client_id: &str, username: Option<&str>) -> ClientAcl {
        let mut acl = ClientAcl::default();
        let section = match username {
            None => Some(&self.anonymous),
            Some(u) => self.users.get(u),
        };
        for rule in section.into_iter().flatten() {
            acl.add(rule.grant, rule.filter.clone());
        }
        for pattern in &self.patterns {
            match substitute(&pattern.filter, client_id, username) {
                Substituted::Filter(filter) => acl.add(pattern.grant, filter),
                Substituted::NoUsername => {}
                Substituted::Refused => acl.deny_all |= pattern.grant == Grant::Deny,
            }
        }
        acl
    }
}

/// The first word of `s` (which has no leading blank) and the rest after the blanks that
/// follow it; blanks are ASCII whitespace.
fn split_word(s: &str) -> (&str, &str) {
    match s.split_once(|c: char| c.is_ascii_whitespace()) {
        Some((word, rest)) => (
            word,
            rest.trim_start_matches(|c: char| c.is_ascii_whitespace()),
        ),
        None => (s, ""),
    }
}

/// What follows `topic` or `pattern` on a line: an optional access word and the filter.
fn parse_rule(keyword: &str, rest: &str) -> Result<Rule, String> {
    if rest.is_empty() {
        return Err(format!("missing topic filter after {keyword:?}"));
    }
    let (first, after) = split_word(rest);
    let (grant, filter) = if after.is_empty() {
        if Grant::from_word(first).is_some() {
            return Err(format!("missing topic filter after access {first:?}"));
        }
        (Grant::ReadWrite, first)
    } else {
        let grant = Grant::from_word(first)
            .ok_or_else(|| format!("unknown access {first:?} (read, write, readwrite or deny)"))?;
        (grant, after)
    };
    if filter.starts_with("$share/") {
        return Err(format!(
            "shared subscription filter {filter:?} in a rule (name the filter it shares)"
        ));
    }
    validate_topic_filter(filter.as_bytes())
        .map_err(|e| format!("invalid topic filter {filter:?}: {}", e.what))?;
    Ok(Rule {
        grant,
        filter: filter.into(),
    })
}

/// A pattern's filter for one client.
enum Substituted {
    /// The filter with `%c` and `%u` replaced.
    Filter(Box<str>),
    /// The pattern holds `%u` and the client has no username: it does not apply.
    NoUsername,
    /// A value may not be substituted (see the module documentation).
    Refused,
}

/// Whether `value` may replace `%c` or `%u`.
fn substitutable(value: &str) -> bool {
    !value.is_empty() && !value.contains(['+', '#', '/'])
}

/// Replaces `%c` with `client_id` and `%u` with `username` in `pattern`, in one pass.
fn substitute(pattern: &str, client_id: &str, username: Option<&str>) -> Substituted {
    let needs_client = pattern.contains("%c");
    let needs_user = pattern.contains("%u");
    if needs_user && username.is_none() {
        return Substituted::NoUsername;
    }
    if (needs_client && !substitutable(client_id))
        || (needs_user && !username.is_some_and(substitutable))
    {
        return Substituted::Refused;
    }
    let mut out = String::with_capacity(pattern.len() + client_id.len());
    let mut rest = pattern;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        rest = if let Some(tail) = after.strip_prefix('c') {
            out.push_str(client_id);
            tail
        } else if let (Some(tail), Some(user)) = (after.strip_prefix('u'), username) {
            out.push_str(user);
            tail
        } else {
            out.push('%');
            after
        };
    }
    out.push_str(rest);
    if out.starts_with('$') && !pattern.starts_with('$') {
        return Substituted::Refused;
    }
    Substituted::Filter(out.into())
}

/// Whether every topic the subscription filter `sub` can match is matched by the rule filter
/// `rule` (both plain, valid filters); see the module documentation.
fn within(sub: &str, rule: &str) -> bool {
    // [MQTT-4.7.2-1]: a rule starting with a wildcard matches no `$` topic.
    if sub.starts_with('$') && rule.starts_with(['+', '#']) {
        return false;
    }
    let (mut s, mut r) = (sub.split('/'), rule.split('/'));
    loop {
        match (s.next(), r.next()) {
            (_, Some("#")) | (None, None) => return true,
            (Some("#"), _) | (Some(_), None) | (None, Some(_)) => return false,
            (Some(_), Some("+")) => {}
            (Some(sub_level), Some(rule_level)) => {
                if sub_level != rule_level {
                    return false;
                }
            }
        }
    }
}

/// The filter a subscription is checked on: the inner filter of `$share/{group}/{filter}`.
fn unshared(filter: &str) -> Option<&str> {
    match filter.strip_prefix("$share/") {
        None => Some(filter),
        Some(rest) => rest.split_once('/').map(|(_, inner)| inner),
    }
    .filter(|f| !f.is_empty())
}

/// The rules of one client.
///
/// The [`Default`] value has no rules and allows nothing.
#[derive(Debug, Clone, Default)]
pub struct ClientAcl {
    /// Filters granting read (from `read` and `readwrite` rules).
    read: Vec<Box<str>>,
    /// Filters granting write (from `write` and `readwrite` rules).
    write: Vec<Box<str>>,
    /// Filters of `deny` rules.
    deny: Vec<Box<str>>,
    /// A deny pattern's substitution was refused: everything is denied.
    deny_all: bool,
}

impl ClientAcl {
    /// Adds one rule's filter under its grant.
    fn add(&mut self, grant: Grant, filter: Box<str>) {
        match grant {
            Grant::Read => self.read.push(filter),
            Grant::Write => self.write.push(filter),
            Grant::ReadWrite => {
                self.read.push(filter.clone());
                self.write.push(filter);
            }
            Grant::Deny => self.deny.push(filter),
        }
    }

    /// May the client publish to (Write) / receive a message on (Read) this topic name?
    ///
    /// No if a deny rule matches the topic, else yes if a rule granting `access` matches it.
    /// `topic` is expected to be a valid Topic Name; an empty one is never allowed.
    pub fn allows_topic(&self, topic: &str, access: Access) -> bool {
        if self.deny_all || topic.is_empty() {
            return false;
        }
        let topic = topic.as_bytes();
        if self.deny.iter().any(|f| matches(f.as_bytes(), topic)) {
            return false;
        }
        let allowing = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
        };
        allowing.iter().any(|f| matches(f.as_bytes(), topic))
    }

    /// May the client subscribe to this filter (Read access for every topic the filter can match,
    /// as far as the allow rules go)? A `$share/group/...` filter is checked on its inner filter.
    ///
    /// No if the filter is within a deny rule's filter, else yes if it is within the filter of
    /// one rule granting read (see the module documentation for "within"). A filter that only
    /// overlaps a deny rule is allowed: see [`ClientAcl::has_deny`]. `filter` is expected to be
    /// a valid Topic Filter; an empty one (or a `$share/` one with no inner filter) is refused.
    pub fn allows_subscribe(&self, filter: &str) -> bool {
        let Some(filter) = unshared(filter) else {
            return false;
        };
        if self.deny_all || self.deny.iter().any(|d| within(filter, d)) {
            return false;
        }
        self.read.iter().any(|r| within(filter, r))
    }

    /// Whether any deny rule applies to this client (then a subscription allowed by
    /// `allows_subscribe` may still match topics it must not read, and each delivered message
    /// must be checked with `allows_topic(topic, Access::Read)`).
    pub fn has_deny(&self) -> bool {
        self.deny_all || !self.deny.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One check against a client's rules, and whether it must pass.
    #[derive(Clone, Copy, Debug)]
    enum Check {
        /// `allows_topic(topic, Access::Write)`.
        Pub(&'static str),
        /// `allows_topic(topic, Access::Read)`.
        Recv(&'static str),
        /// `allows_subscribe(filter)`.
        Sub(&'static str),
    }
    use Check::{Pub, Recv, Sub};

    /// A file, a client, what it may do and what it may not.
    struct Case {
        file: &'static str,
        client_id: &'static str,
        username: Option<&'static str>,
        allowed: &'static [Check],
        refused: &'static [Check],
        has_deny: bool,
    }

    const SECTIONS: &str = "# shared topics\n\
                            topic read public/#\n\
                            topic anon/in\n\
                            \n\
                            user alice\n\
                            topic alice/#\n\
                            topic read public/news\n\
                            user bob\n\
                            topic write bob/out\n";

    const PATTERNS: &str = "pattern readwrite devices/%c/#\n\
                            pattern read users/%u/inbox\n\
                            pattern write log/%c/%u\n\
                            pattern read hello\n";

    const RW: &str = "user u\n\
                      topic read r/#\n\
                      topic write w/#\n\
                      topic readwrite rw/#\n\
                      topic both\n";

    const DENY: &str = "user u\n\
                        topic deny a/secret/#\n\
                        topic readwrite a/#\n\
                        topic read b/+\n\
                        pattern deny a/%u/private\n\
                        topic deny b/x\n";

    const SUBS: &str = "user u\n\
                        topic read a/#\n\
                        topic read p/+\n\
                        topic read exact/b\n\
                        topic read m/+/n/#\n\
                        topic write w/#\n";

    const CASES: &[Case] = &[
        // The anonymous section applies to clients without a username only.
        Case {
            file: SECTIONS,
            client_id: "c1",
            username: None,
            allowed: &[
                Recv("public/x"),
                Recv("public"),
                Sub("public/#"),
                Pub("anon/in"),
                Recv("anon/in"),
            ],
            refused: &[Pub("public/x"), Recv("alice/x"), Pub("bob/out"), Sub("#")],
            has_deny: false,
        },
        // A user's section, and not the anonymous one.
        Case {
            file: SECTIONS,
            client_id: "c1",
            username: Some("alice"),
            allowed: &[
                Pub("alice/x"),
                Recv("alice/x/y"),
                Recv("alice"),
                Sub("alice/#"),
                Recv("public/news"),
            ],
            refused: &[
                Recv("public/x"),
                Pub("anon/in"),
                Pub("bob/out"),
                Recv("alicex"),
            ],
            has_deny: false,
        },
        Case {
            file: SECTIONS,
            client_id: "c1",
            username: Some("bob"),
            allowed: &[Pub("bob/out")],
            refused: &[Recv("bob/out"), Sub("bob/out"), Pub("alice/x")],
            has_deny: false,
        },
        // A username with no section gets nothing (no fallback to the anonymous section).
        Case {
            file: SECTIONS,
            client_id: "c1",
            username: Some("carol"),
            allowed: &[],
            refused: &[Recv("public/x"), Pub("anon/in"), Pub("alice/x")],
            has_deny: false,
        },
        // Patterns apply to everyone; %u ones only with a username.
        Case {
            file: PATTERNS,
            client_id: "d1",
            username: None,
            allowed: &[
                Pub("devices/d1/temp"),
                Recv("devices/d1"),
                Sub("devices/d1/#"),
                Recv("hello"),
            ],
            refused: &[
                Pub("devices/d2/temp"),
                Sub("devices/+/temp"),
                Recv("users/d1/inbox"),
                Pub("log/d1/"),
                Pub("log/d1/%u"),
                Pub("hello"),
            ],
            has_deny: false,
        },
        Case {
            file: PATTERNS,
            client_id: "d1",
            username: Some("bob"),
            allowed: &[
                Pub("devices/d1/temp"),
                Recv("users/bob/inbox"),
                Sub("users/bob/inbox"),
                Pub("log/d1/bob"),
                Recv("hello"),
            ],
            refused: &[
                Pub("users/bob/inbox"),
                Recv("users/alice/inbox"),
                Pub("log/bob/d1"),
                Recv("log/d1/bob"),
            ],
            has_deny: false,
        },
        // The access word: read, write, readwrite, and readwrite when left out.
        Case {
            file: RW,
            client_id: "c",
            username: Some("u"),
            allowed: &[
                Recv("r/x"),
                Sub("r/#"),
                Pub("w/x"),
                Pub("rw/x"),
                Recv("rw/x"),
                Sub("rw/+"),
                Pub("both"),
                Recv("both"),
                Sub("both"),
            ],
            refused: &[
                Pub("r/x"),
                Recv("w/x"),
                Sub("w/#"),
                Sub("w/x"),
                Pub("other"),
            ],
            has_deny: false,
        },
        // Deny wins, whatever the order of the lines and whether it is a topic or a pattern.
        Case {
            file: DENY,
            client_id: "c",
            username: Some("u"),
            allowed: &[
                Pub("a/x"),
                Recv("a/secretive"),
                Recv("b/y"),
                Recv("a/u/public"),
                // Overlapping a deny rule: allowed here, deliveries checked one by one.
                Sub("a/#"),
                Sub("a/+"),
                Sub("a/+/private"),
                Sub("b/+"),
            ],
            refused: &[
                Pub("a/secret"),
                Recv("a/secret/x"),
                Pub("a/u/private"),
                Recv("a/u/private"),
                Recv("b/x"),
                // Within a deny rule.
                Sub("a/secret/#"),
                Sub("a/secret"),
                Sub("a/secret/+/z"),
                Sub("a/u/private"),
                Sub("b/x"),
                Sub("$share/g/a/secret/#"),
            ],
            has_deny: true,
        },
        // Subscriptions must be within one rule granting read.
        Case {
            file: SUBS,
            client_id: "c",
            username: Some("u"),
            allowed: &[
                Sub("a/#"),
                Sub("a"),
                Sub("a/b"),
                Sub("a/b/+"),
                Sub("a/+/c/#"),
                Sub("p/+"),
                Sub("p/b"),
                Sub("p/"),
                Sub("exact/b"),
                Sub("m/+/n"),
                Sub("m/x/n/#"),
                Sub("$share/group/a/b/+"),
                Sub("$share/group/p/+"),
            ],
            refused: &[
                Sub("#"),
                Sub("+"),
                Sub("+/b"),
                Sub("p/#"),
                Sub("p"),
                Sub("p/b/c"),
                Sub("exact/+"),
                Sub("exact/#"),
                Sub("exact"),
                Sub("m/#"),
                Sub("m/+"),
                Sub("m/+/+"),
                Sub("w/#"),
                Sub("$share/group/#"),
                Sub("$share/group"),
                Sub("$share/group/"),
                Sub(""),
                Recv(""),
            ],
            has_deny: false,
        },
        // `#` and `+` do not reach into `$` topics ([MQTT-4.7.2-1]); a `$SYS` rule does.
        Case {
            file: "user admin\ntopic #\ntopic read $SYS/#\nuser u\ntopic #\ntopic +/x\n",
            client_id: "c",
            username: Some("u"),
            allowed: &[Sub("#"), Sub("+/x"), Sub("+/+"), Pub("a/b"), Recv("a")],
            refused: &[
                Recv("$SYS/broker/uptime"),
                Pub("$SYS/x"),
                Recv("$x"),
                Sub("$SYS/#"),
                Sub("$SYS/broker/uptime"),
                Sub("$x"),
            ],
            has_deny: false,
        },
        Case {
            file: "user admin\ntopic #\ntopic read $SYS/#\nuser u\ntopic #\n",
            client_id: "c",
            username: Some("admin"),
            allowed: &[
                Sub("#"),
                Recv("$SYS/broker/uptime"),
                Recv("$SYS"),
                Sub("$SYS/#"),
                Sub("$SYS/+/uptime"),
            ],
            refused: &[Pub("$SYS/x"), Sub("$other/#"), Sub("$SYSX/a")],
            has_deny: false,
        },
        // Username with spaces, blanks around words, tabs, CRLF, indented comments; filters
        // with spaces after an access word.
        Case {
            file: "# header\r\n   # indented comment\r\n\t\r\nuser   John Smith  \r\n\
                   topic\tread  a b/#  \r\n  topic write c d\r\n",
            client_id: "c",
            username: Some("John Smith"),
            allowed: &[Recv("a b/x"), Recv("a b"), Pub("c d"), Sub("a b/#")],
            refused: &[Recv("a"), Recv("a bb"), Pub("c"), Recv("c d")],
            has_deny: false,
        },
        Case {
            file: "user   John Smith  \ntopic a\n",
            client_id: "c",
            username: Some("John"),
            allowed: &[],
            refused: &[Recv("a")],
            has_deny: false,
        },
        // Sections for one username add up.
        Case {
            file: "user u\ntopic read a\nuser v\ntopic b\nuser u\ntopic write c\n",
            client_id: "c",
            username: Some("u"),
            allowed: &[Recv("a"), Pub("c")],
            refused: &[Recv("b"), Recv("c"), Pub("a")],
            has_deny: false,
        },
        // Substitution refuses ids and usernames holding `/`, `+` or `#`, and empty ones.
        Case {
            file: PATTERNS,
            client_id: "d1/x",
            username: Some("bob"),
            allowed: &[Recv("users/bob/inbox"), Recv("hello")],
            refused: &[
                Pub("devices/d1/x/temp"),
                Pub("devices/d1/x"),
                Pub("log/d1/x/bob"),
            ],
            has_deny: false,
        },
        Case {
            file: PATTERNS,
            client_id: "+",
            username: Some("#"),
            allowed: &[Recv("hello")],
            refused: &[
                Pub("devices/other/temp"),
                Pub("devices/+/temp"),
                Recv("users/anyone/inbox"),
                Recv("users/#/inbox"),
            ],
            has_deny: false,
        },
        Case {
            file: PATTERNS,
            client_id: "#",
            username: Some("a/b"),
            allowed: &[Recv("hello")],
            refused: &[Pub("devices/x"), Recv("users/a/b/inbox"), Sub("devices/#")],
            has_deny: false,
        },
        Case {
            file: PATTERNS,
            client_id: "",
            username: Some(""),
            allowed: &[Recv("hello")],
            refused: &[Pub("devices//x"), Recv("users//inbox"), Pub("log//")],
            has_deny: false,
        },
        // A substitution may not make a filter start with `$`.
        Case {
            file: "pattern %c/#\npattern read $SYS/%c\n",
            client_id: "$SYS",
            username: None,
            allowed: &[Recv("$SYS/$SYS")],
            refused: &[Pub("$SYS/broker"), Recv("$SYS"), Sub("$SYS/#")],
            has_deny: false,
        },
        // One pass: a username holding `%c` is not substituted again; other `%` stay.
        Case {
            file: "pattern read u/%u\npattern read x/%%c/100%\n",
            client_id: "id",
            username: Some("%c"),
            allowed: &[Recv("u/%c"), Recv("x/%id/100%")],
            refused: &[Recv("u/id"), Recv("x/%%c/100%")],
            has_deny: false,
        },
        // A refused deny pattern denies everything; one needing a missing username does not.
        Case {
            file: "topic #\npattern deny %c/private\n",
            client_id: "a/b",
            username: None,
            allowed: &[],
            refused: &[Pub("x"), Recv("x"), Sub("x"), Sub("#")],
            has_deny: true,
        },
        Case {
            file: "topic #\npattern deny %c/private\n",
            client_id: "ab",
            username: None,
            allowed: &[Pub("x"), Recv("a/b/private"), Sub("#")],
            refused: &[Recv("ab/private"), Sub("ab/private")],
            has_deny: true,
        },
        Case {
            file: "topic #\npattern deny %u/private\n",
            client_id: "a/b",
            username: None,
            allowed: &[Pub("x"), Recv("x"), Sub("#")],
            refused: &[],
            has_deny: false,
        },
        // A byte order mark is skipped.
        Case {
            file: "\u{feff}topic read a\n",
            client_id: "c",
            username: None,
            allowed: &[Recv("a")],
            refused: &[Pub("a")],
            has_deny: false,
        },
        // No rules: nothing is allowed.
        Case {
            file: "",
            client_id: "c",
            username: None,
            allowed: &[],
            refused: &[Pub("a"), Recv("a"), Sub("a"), Sub("#")],
            has_deny: false,
        },
        Case {
            file: "# only comments\n\n   \n",
            client_id: "c",
            username: Some("u"),
            allowed: &[],
            refused: &[Pub("a"), Recv("a"), Sub("#")],
            has_deny: false,
        },
    ];

    fn passes(acl: &ClientAcl, check: Check) -> bool {
        match check {
            Pub(t) => acl.allows_topic(t, Access::Write),
            Recv(t) => acl.allows_topic(t, Access::Read),
            Sub(f) => acl.allows_subscribe(f),
        }
    }

    #[test]
    fn table() {
        for (i, case) in CASES.iter().enumerate() {
            let acl = Acl::parse(case.file).unwrap_or_else(|e| panic!("case {i}: {e}"));
            let client = acl.for_client(case.client_id, case.username);
            for &check in case.allowed {
                assert!(passes(&client, check), "case {i}: {check:?} refused");
            }
            for &check in case.refused {
                assert!(!passes(&client, check), "case {i}: {check:?} allowed");
            }
            assert_eq!(client.has_deny(), case.has_deny, "case {i}: has_deny");
        }
    }

    #[test]
    fn errors_name_the_line() {
        let cases: &[(&str, &str)] = &[
            (
                "user u\n\n# c\ntopic a\n\n\ntopic rw a/b\n",
                "line 7: unknown access \"rw\" (read, write, readwrite or deny)",
            ),
            (
                "topic a\nfoo bar\n",
                "line 2: unknown keyword \"foo\" (user, topic or pattern)",
            ),
            (
                "Topic a\n",
                "line 1: unknown keyword \"Topic\" (user, topic or pattern)",
            ),
            ("user\n", "line 1: missing username after \"user\""),
            (
                "\r\nuser  \t \r\n",
                "line 2: missing username after \"user\"",
            ),
            ("topic\n", "line 1: missing topic filter after \"topic\""),
            (
                "pattern   \n",
                "line 1: missing topic filter after \"pattern\"",
            ),
            (
                "topic read\n",
                "line 1: missing topic filter after access \"read\"",
            ),
            (
                "pattern deny\n",
                "line 1: missing topic filter after access \"deny\"",
            ),
            (
                "topic my topic\n",
                "line 1: unknown access \"my\" (read, write, readwrite or deny)",
            ),
            (
                "topic READ a\n",
                "line 1: unknown access \"READ\" (read, write, readwrite or deny)",
            ),
            (
                "topic a\ntopic a/#/b\n",
                "line 2: invalid topic filter \"a/#/b\": \
                 '#' must be alone in the last level of a topic filter",
            ),
            (
                "pattern read a+/%c\n",
                "line 1: invalid topic filter \"a+/%c\": \
                 '+' must occupy a whole level of a topic filter",
            ),
            (
                "topic write a/#b\n",
                "line 1: invalid topic filter \"a/#b\": \
                 '#' must be alone in the last level of a topic filter",
            ),
            (
                "topic read $share/g/a\n",
                "line 1: shared subscription filter \"$share/g/a\" in a rule \
                 (name the filter it shares)",
            ),
            (
                "topic a\u{0}b\n",
                "line 1: invalid topic filter \"a\\0b\": string contains U+0000",
            ),
        ];
        for &(file, want) in cases {
            assert_eq!(Acl::parse(file).unwrap_err(), want, "file {file:?}");
        }
    }

    #[test]
    fn errors_are_one_line() {
        for file in [
            "topic a\rb c\n",
            "\u{2028} x\n",
            "topic read a\n\"\nx",
            "topic \u{85}/#\t\u{2029}\n",
        ] {
            let err = Acl::parse(file).unwrap_err();
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(
                !err.contains(['\r', '\u{85}', '\u{2028}', '\u{2029}']),
                "{err}"
            );
        }
    }

    #[test]
    fn the_default_client_acl_allows_nothing() {
        let acl = ClientAcl::default();
        assert!(!acl.allows_topic("a", Access::Read));
        assert!(!acl.allows_topic("a", Access::Write));
        assert!(!acl.allows_subscribe("#"));
        assert!(!acl.has_deny());
        let acl = Acl::default().for_client("c", None);
        assert!(!acl.allows_topic("a", Access::Read));
    }

    /// Every valid filter of up to `max_levels` levels over `levels`.
    fn filters(levels: &[&str], max_levels: usize) -> Vec<String> {
        let mut all: Vec<String> = levels.iter().map(|l| (*l).to_owned()).collect();
        let mut last = all.clone();
        for _ in 1..max_levels {
            let next: Vec<String> = last
                .iter()
                .flat_map(|f| levels.iter().map(move |l| format!("{f}/{l}")))
                .collect();
            all.extend(next.iter().cloned());
            last = next;
        }
        all.retain(|f| validate_topic_filter(f.as_bytes()).is_ok());
        all
    }

    /// Topic levels the filters below are tested against ("" is an empty level).
    const TOPIC_LEVELS: &[&str] = &["a", "b", "$s", ""];
    /// Filter levels: the topic levels and the wildcards.
    const FILTER_LEVELS: &[&str] = &["a", "b", "$s", "", "+", "#"];

    #[test]
    fn within_is_sound() {
        let subs = filters(FILTER_LEVELS, 3);
        let topics = filters(TOPIC_LEVELS, 4);
        let mut pairs = 0;
        for sub in &subs {
            for rule in &subs {
                if !within(sub, rule) {
                    continue;
                }
                pairs += 1;
                for topic in &topics {
                    let (s, r, t) = (sub.as_bytes(), rule.as_bytes(), topic.as_bytes());
                    assert!(
                        !matches(s, t) || matches(r, t),
                        "{sub:?} within {rule:?}, but {topic:?} matches only the subscription"
                    );
                }
            }
        }
        assert!(pairs > 1000, "{pairs}");
    }

    #[test]
    fn within_is_complete_but_for_plus_hash() {
        // Short filters against longer topics with a level neither filter names ("c").
        let subs = filters(FILTER_LEVELS, 2);
        let topics = filters(&["a", "b", "c", "$s", ""], 3);
        for sub in &subs {
            for rule in &subs {
                if within(sub, rule) || (sub == "#" && rule == "+/#") {
                    continue;
                }
                let witness = topics.iter().any(|t| {
                    let t = t.as_bytes();
                    matches(sub.as_bytes(), t) && !matches(rule.as_bytes(), t)
                });
                assert!(
                    witness,
                    "{sub:?} not within {rule:?}, yet no topic tells them apart"
                );
            }
        }
    }

    #[test]
    fn an_allowed_subscription_reads_only_allowed_topics_without_deny() {
        let acl = Acl::parse(
            "topic read a/#\ntopic read +/b\ntopic read $s/+\ntopic read b/a\ntopic write #\n",
        )
        .unwrap()
        .for_client("c", None);
        assert!(!acl.has_deny());
        let topics = filters(TOPIC_LEVELS, 4);
        let mut allowed = 0;
        for sub in filters(FILTER_LEVELS, 3) {
            if !acl.allows_subscribe(&sub) {
                continue;
            }
            allowed += 1;
            for topic in &topics {
                if matches(sub.as_bytes(), topic.as_bytes()) {
                    assert!(
                        acl.allows_topic(topic, Access::Read),
                        "{sub:?} reads {topic:?}"
                    );
                }
            }
        }
        assert!(allowed > 20, "{allowed}");
    }

    #[test]
    fn substitution() {
        let sub = |p, c, u| match substitute(p, c, u) {
            Substituted::Filter(f) => Ok(f.into_string()),
            Substituted::NoUsername => Err("no username"),
            Substituted::Refused => Err("refused"),
        };
        assert_eq!(sub("a/%c/%u", "id", Some("me")), Ok("a/id/me".to_owned()));
        assert_eq!(sub("%c-%c", "id", None), Ok("id-id".to_owned()));
        assert_eq!(
            sub("no/markers", "a/b", Some("+")),
            Ok("no/markers".to_owned())
        );
        assert_eq!(sub("%u", "id", None), Err("no username"));
        assert_eq!(sub("%c/%u", "a/b", None), Err("no username"));
        assert_eq!(sub("%c", "a/b", Some("me")), Err("refused"));
        assert_eq!(sub("%c", "a+", Some("me")), Err("refused"));
        assert_eq!(sub("%c", "#", Some("me")), Err("refused"));
        assert_eq!(sub("%u", "id", Some("a/b")), Err("refused"));
        assert_eq!(sub("%u", "id", Some("")), Err("refused"));
        assert_eq!(sub("%c/x", "$SYS", None), Err("refused"));
        assert_eq!(sub("x/%c", "$SYS", None), Ok("x/$SYS".to_owned()));
        assert_eq!(sub("$q/%c", "$SYS", None), Ok("$q/$SYS".to_owned()));
        assert_eq!(sub("%u", "id", Some("%c")), Ok("%c".to_owned()));
        assert_eq!(sub("%%c%", "id", None), Ok("%id%".to_owned()));
        assert_eq!(sub("é/%c", "ü", None), Ok("é/ü".to_owned()));
    }
}
