//! Just enough HCL to read the Vault files pgwarden ships: ACL policies
//! (`path "…" { capabilities = [...] }`) and password policies (`length = N`,
//! `rule "charset" { charset = "…" min-chars = N }`).
//!
//! Attributes (`key = value`, values being strings, integers, booleans or
//! lists of them), labelled blocks and `#`, `//` and `/* */` comments. Anything
//! else is an error, so a test never passes on a file it half understood.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    List(Vec<Value>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Attr(String, Value),
    Block {
        kind: String,
        labels: Vec<String>,
        body: Vec<Node>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Str(String),
    Int(i64),
    Punct(char),
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' || (c == '/' && next == Some('/')) {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let end = (i + 2..chars.len().saturating_sub(1))
                .find(|&j| chars[j] == '*' && chars[j + 1] == '/')
                .ok_or("unterminated /* comment")?;
            i = end + 2;
        } else if c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None | Some('\n') => return Err("unterminated string".into()),
                    Some('"') => break,
                    Some('\\') => {
                        s.push(match chars.get(i + 1) {
                            Some('n') => '\n',
                            Some('t') => '\t',
                            Some(&e @ ('"' | '\\')) => e,
                            other => return Err(format!("unknown escape \\{other:?}")),
                        });
                        i += 2;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            i += 1;
            out.push(Token::Str(s));
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let n: String = chars[start..i].iter().collect();
            out.push(Token::Int(n.parse().map_err(|e| format!("{n}: {e}"))?));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_-".contains(chars[i])) {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if "={}[],".contains(c) {
            out.push(Token::Punct(c));
            i += 1;
        } else {
            return Err(format!("unexpected character {c:?}"));
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        match self.next() {
            Some(Token::Punct(p)) if p == c => Ok(()),
            other => Err(format!("expected {c:?}, found {other:?}")),
        }
    }

    fn body(&mut self, nested: bool) -> Result<Vec<Node>, String> {
        let mut nodes = Vec::new();
        loop {
            match self.next() {
                None if !nested => return Ok(nodes),
                Some(Token::Punct('}')) if nested => return Ok(nodes),
                Some(Token::Ident(name)) => nodes.push(self.item(name)?),
                other => return Err(format!("expected an attribute or a block, found {other:?}")),
            }
        }
    }

    fn item(&mut self, name: String) -> Result<Node, String> {
        if self.peek() == Some(&Token::Punct('=')) {
            self.next();
            return Ok(Node::Attr(name, self.value()?));
        }
        let mut labels = Vec::new();
        while let Some(Token::Str(s)) = self.peek().cloned() {
            labels.push(s);
            self.next();
        }
        self.expect('{')?;
        Ok(Node::Block {
            kind: name,
            labels,
            body: self.body(true)?,
        })
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.next() {
            Some(Token::Str(s)) => Ok(Value::Str(s)),
            Some(Token::Int(n)) => Ok(Value::Int(n)),
            Some(Token::Ident(b)) if b == "true" || b == "false" => Ok(Value::Bool(b == "true")),
            Some(Token::Punct('[')) => {
                let mut items = Vec::new();
                loop {
                    if self.peek() == Some(&Token::Punct(']')) {
                        self.next();
                        return Ok(Value::List(items));
                    }
                    items.push(self.value()?);
                    match self.next() {
                        Some(Token::Punct(',')) => {}
                        Some(Token::Punct(']')) => return Ok(Value::List(items)),
                        other => return Err(format!("expected ',' or ']', found {other:?}")),
                    }
                }
            }
            other => Err(format!("expected a value, found {other:?}")),
        }
    }
}

/// The top-level nodes of an HCL file.
pub fn parse(text: &str) -> Result<Vec<Node>, String> {
    Parser {
        tokens: tokens(text)?,
        at: 0,
    }
    .body(false)
}

/// A Vault ACL policy as path → capabilities. Only `path "…" { capabilities = [...] }`
/// blocks are accepted (no parameters, no duplicates).
pub fn acl_policy(text: &str) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    let mut out = BTreeMap::new();
    for node in parse(text)? {
        let Node::Block { kind, labels, body } = node else {
            return Err(format!("unexpected top-level attribute {node:?}"));
        };
        let [path] = labels.as_slice() else {
            return Err(format!("{kind} block needs exactly one label"));
        };
        if kind != "path" {
            return Err(format!("unexpected block {kind:?}"));
        }
        let [Node::Attr(key, Value::List(caps))] = body.as_slice() else {
            return Err(format!(
                "path {path:?}: only `capabilities = [...]` is expected"
            ));
        };
        if key != "capabilities" {
            return Err(format!("path {path:?}: unexpected {key:?}"));
        }
        let caps = caps
            .iter()
            .map(|c| match c {
                Value::Str(s) => Ok(s.clone()),
                other => Err(format!("path {path:?}: capability {other:?}")),
            })
            .collect::<Result<BTreeSet<_>, _>>()?;
        if out.insert(path.clone(), caps).is_some() {
            return Err(format!("path {path:?} appears twice"));
        }
    }
    Ok(out)
}

/// Whether `policy` grants `capability` on `path`, with Vault's pattern syntax: a trailing
/// `*` matches any rest, a `+` matches one path segment. Of several matching patterns the
/// most specific (no wildcard, then longest) decides, and `deny` always refuses.
pub fn allows(policy: &BTreeMap<String, BTreeSet<String>>, path: &str, capability: &str) -> bool {
    policy
        .iter()
        .filter(|(pattern, _)| glob(pattern.as_bytes(), path.as_bytes()))
        .max_by_key(|(pattern, _)| (!pattern.contains(['*', '+']), pattern.len()))
        .is_some_and(|(_, caps)| caps.contains(capability) && !caps.contains("deny"))
}

fn glob(pattern: &[u8], path: &[u8]) -> bool {
    match pattern.first() {
        None => path.is_empty(),
        Some(b'*') if pattern.len() == 1 => true,
        Some(b'+') => {
            let segment = path.iter().position(|&c| c == b'/').unwrap_or(path.len());
            segment > 0 && glob(&pattern[1..], &path[segment..])
        }
        Some(&c) => path.first() == Some(&c) && glob(&pattern[1..], &path[1..]),
    }
}
