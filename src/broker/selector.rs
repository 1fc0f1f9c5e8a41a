//! JMS message selectors: the SQL-92 subset of JMS 1.1 §3.8.1.1, as ActiveMQ 5.x implements it.
//!
//! A [`Selector`] is parsed once (when a consumer subscribes) and evaluated against each
//! candidate [`Message`]. Evaluation allocates nothing and never fails: anything that cannot
//! be decided (a missing property, a string that is not a number) is SQL's UNKNOWN, and a
//! message matches only when the whole selector is TRUE.
//!
//! # Language
//! - Literals: strings `'it''s'`; exact numbers `10`, `10L`, hex `0x1F`, octal `017`;
//!   approximate numbers `1.5`, `.5`, `1e3`, `1.5E-2`; `TRUE`, `FALSE`.
//! - Identifiers (case-sensitive) name message properties, which are our application headers
//!   (the first header of that name), or these JMS header fields:
//!
//!   | identifier          | value                                                    |
//!   |---------------------|----------------------------------------------------------|
//!   | `JMSMessageID`      | the message id (string)                                  |
//!   | `JMSDestination`    | the destination, e.g. `'queue://orders'`; on a DLQ the one |
//!   |                     | the message came from (`original-destination`)           |
//!   | `JMSDeliveryMode`   | `'PERSISTENT'` / `'NON_PERSISTENT'` (text only, as in ActiveMQ: never equal to 2 / 1) |
//!   | `JMSPriority`       | 0..9                                                     |
//!   | `JMSTimestamp`      | milliseconds since the Unix epoch                        |
//!   | `JMSExpiration`     | milliseconds since the Unix epoch; 0 = never             |
//!   | `JMSRedelivered`    | TRUE when delivered before                               |
//!   | `JMSXDeliveryCount` | deliveries including this one (ActiveMQ's)               |
//!   | `JMSCorrelationID`  | header `correlation-id` (as STOMP/ActiveMQ map it)       |
//!   | `JMSType`           | header `jms-type` (STOMP's `type`)                       |
//!   | `JMSReplyTo`        | header `reply-to` (`queue://x`, as ActiveMQ prints it)   |
//!
//!   `JMSXGroupSeq` is its header, or 0 without one, as in ActiveMQ;
//!   `JMSActiveMQBrokerInTime` is the stored timestamp. Any other name (`JMSXGroupID`
//!   included) is the header of that name.
//! - Operators, loosest first: `OR`; `AND`; `NOT`; `=` `<>` `IS [NOT] NULL`;
//!   `<` `>` `<=` `>=` `[NOT] LIKE 'pattern' [ESCAPE 'c']` `[NOT] BETWEEN a AND b`
//!   `[NOT] IN ('a', 'b')`; `+` `-`; `*` `/` `%`; unary `+` `-`; parentheses. Keywords are
//!   case-insensitive. Comments `-- to end of line` (which needs the line end: without one
//!   `--` is two minus signs) and `/* ... */` are skipped, as in ActiveMQ.
//!
//! # Values and comparisons
//! A JMS client's typed property is its type (an int, a double, a boolean); a string property,
//! which every STOMP header is, converts where it must (as ActiveMQ converts for STOMP):
//! - string with number: numeric when the string parses as a number (`'10'`, `'2.5'`);
//! - string with string: `=` and `<>` compare the text exactly; `<` `>` `<=` `>=` are numeric
//!   when both parse as numbers, else in text order (ActiveMQ orders two strings as text
//!   always, so `'9' < '10'` differs); a string literal that is no number cannot be ordered
//!   (`x > 'a'` is refused, as by ActiveMQ; `x > '100'` orders as 100);
//! - booleans compare (`=`, `<>` only) with `TRUE`/`FALSE` and with strings `'true'`/`'false'`
//!   (any case); a property used as a condition (`WHERE flag`) is true when it says `true`,
//!   and any other value is FALSE there (`NOT color` holds), as ActiveMQ's boolean cast;
//! - values that cannot be compared (`'red' = 1`, a boolean with a number) are not equal:
//!   FALSE, `<>` TRUE, as in ActiveMQ;
//! - `LIKE` applies to strings (anything else is FALSE), `IN` to strings (anything else is
//!   UNKNOWN); `LIKE`'s escape character escapes only `%`, `_` and itself, else it is itself,
//!   as in ActiveMQ; arithmetic applies to numbers (and numeric strings);
//!   integer arithmetic that overflows continues in floating point; `/` divides in floating
//!   point, as ActiveMQ does (`5 / 2` is 2.5, `1 / 0` infinity); `%` is Java's remainder, and
//!   an integer remainder by zero is UNKNOWN.
//!
//! Anything involving a missing property is UNKNOWN, so `x = 1` and `NOT (x = 1)` are both
//! false when `x` is missing, while `x IS NULL` is true.
//!
//! Two differences from ActiveMQ are kept, since ActiveMQ's are parser accidents that JMS does
//! not allow: `NOT` negates a whole comparison (`NOT color = 'red'` selects every colour but
//! red; ActiveMQ reads `(NOT color) = 'red'`, which never holds), and `+` adds numbers only
//! (ActiveMQ also joins strings). A selector may nest [`MAX_DEPTH`] levels.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use crate::store::{Message, PropertyType};

/// How deeply a selector may nest: parentheses, `NOT` and signs, and the depth of the
/// expression tree (a chain of `AND`s or of `OR`s counts as one level). Deeper selectors are
/// refused, so hostile input cannot exhaust the stack.
pub const MAX_DEPTH: usize = 100;

/// Why a selector was refused; fit to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector error at column {column}: {message}")]
pub struct SelectorError {
    /// 1-based, in characters; one past the end when the selector ended too early.
    pub column: usize,
    pub message: String,
}

/// A parsed JMS message selector.
#[derive(Debug, Clone)]
pub struct Selector {
    text: String,
    /// `None`: an empty selector, which matches everything.
    root: Option<Expr>,
}

impl Selector {
    /// Parses a selector. An empty (or whitespace/comment-only) selector matches everything.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let tokens = lex(text)?;
        if tokens[0].tok == Tok::End {
            return Ok(Selector {
                text: text.to_string(),
                root: None,
            });
        }
        let mut parser = Parser {
            tokens,
            pos: 0,
            nesting: 0,
        };
        let root = parser.expr(OR)?;
        let end = parser.peek();
        if end.tok != Tok::End {
            let expected = if root.kind == Kind::Bool {
                "AND, OR or the end of the selector"
            } else {
                "an operator or the end of the selector"
            };
            return Err(parser.expected(expected));
        }
        if matches!(root.kind, Kind::Num | Kind::Str) {
            return Err(SelectorError {
                column: root.column,
                message: format!(
                    "the selector must be a condition (a comparison, LIKE, IN, BETWEEN, IS NULL \
                     or a boolean), not {}",
                    root.kind.noun()
                ),
            });
        }
        Ok(Selector {
            text: text.to_string(),
            root: Some(root.expr),
        })
    }

    /// The selector as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// True for an empty selector, which matches every message.
    pub fn matches_all(&self) -> bool {
        self.root.is_none()
    }

    /// Whether the message is selected: the selector is TRUE for it (not FALSE, not UNKNOWN).
    /// `JMSRedelivered` and `JMSXDeliveryCount` come from `message.redelivery_count`.
    pub fn matches(&self, message: &Message) -> bool {
        self.matches_with_redeliveries(message, message.redelivery_count)
    }

    /// As [`matches`](Self::matches), with the number of earlier deliveries given (the core
    /// counts redeliveries on its queue entry rather than in the stored message).
    pub fn matches_with_redeliveries(&self, message: &Message, redeliveries: u32) -> bool {
        match &self.root {
            None => true,
            Some(root) => {
                let cx = Ctx {
                    message,
                    redeliveries,
                };
                truth(root.eval(&cx)) == Some(true)
            }
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Selector, SelectorError> {
        Selector::parse(text)
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    /// An integer literal. Decimal literals above `i64::MAX` are kept so `-9223372036854775808`
    /// can be written; hex and octal ones are range-checked by the lexer.
    Int(u64),
    Float(f64),
    Kw(Kw),
    Sym(Sym),
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kw {
    Not,
    And,
    Or,
    Between,
    Like,
    Escape,
    In,
    Is,
    Null,
    True,
    False,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sym {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    LParen,
    RParen,
    Comma,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    /// 1-based character column of the token's first character.
    column: usize,
    /// The source text, for error messages.
    text: String,
}

impl Token {
    /// The token as error messages show it: quoted, or as written for a string literal.
    fn show(&self) -> String {
        match self.tok {
            Tok::End => "the end of the selector".to_string(),
            Tok::Str(_) => self.text.clone(),
            _ => format!("'{}'", self.text),
        }
    }
}

fn error(column: usize, message: impl Into<String>) -> SelectorError {
    SelectorError {
        column,
        message: message.into(),
    }
}

fn keyword(word: &str) -> Option<Kw> {
    Some(match word.to_ascii_uppercase().as_str() {
        "NOT" => Kw::Not,
        "AND" => Kw::And,
        "OR" => Kw::Or,
        "BETWEEN" => Kw::Between,
        "LIKE" => Kw::Like,
        "ESCAPE" => Kw::Escape,
        "IN" => Kw::In,
        "IS" => Kw::Is,
        "NULL" => Kw::Null,
        "TRUE" => Kw::True,
        "FALSE" => Kw::False,
        _ => return None,
    })
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || c == '$'
}

fn is_ident_part(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

/// Splits a selector into tokens, ending with [`Tok::End`].
fn lex(text: &str) -> Result<Vec<Token>, SelectorError> {
    let chars: Vec<char> = text.chars().collect();
    let len = chars.len();
    let at = |i: usize| chars.get(i).copied();
    // Where the last line terminator is: a `--` before it starts a comment.
    let last_terminator = chars.iter().rposition(|&c| c == '\n' || c == '\r');
    let mut out = Vec::new();
    let mut i = 0;
    while i < len {
        let c = chars[i];
        let start = i;
        let column = start + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        // A line comment ends at a line terminator, which it needs: without one, as in
        // ActiveMQ's grammar, `--` is two minus signs (`size--1` is `size - -1`).
        if c == '-' && at(i + 1) == Some('-') && last_terminator.is_some_and(|end| end > i) {
            while i < len && chars[i] != '\n' && chars[i] != '\r' {
                i += 1;
            }
            continue;
        }
        if c == '/' && at(i + 1) == Some('*') {
            i += 2;
            loop {
                if i + 1 >= len {
                    return Err(error(column, "unterminated comment: expected '*/'"));
                }
                if chars[i] == '*' && chars[i + 1] == '/' {
                    i += 2;
                    break;
                }
                i += 1;
            }
            continue;
        }
        let tok = if c == '\'' {
            i += 1;
            let mut value = String::new();
            loop {
                match at(i) {
                    None => {
                        return Err(error(
                            column,
                            "unterminated string literal (a quote inside a string is written '')",
                        ))
                    }
                    Some('\'') if at(i + 1) == Some('\'') => {
                        value.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
            Tok::Str(value)
        } else if c.is_ascii_digit() || (c == '.' && at(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            lex_number(&chars, &mut i)?
        } else if is_ident_start(c) {
            while i < len && is_ident_part(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            match keyword(&word) {
                Some(kw) => Tok::Kw(kw),
                None => Tok::Ident(word),
            }
        } else {
            i += 1;
            let sym = match c {
                '=' => Sym::Eq,
                '<' if at(i) == Some('>') => {
                    i += 1;
                    Sym::Ne
                }
                '<' if at(i) == Some('=') => {
                    i += 1;
                    Sym::Le
                }
                '<' => Sym::Lt,
                '>' if at(i) == Some('=') => {
                    i += 1;
                    Sym::Ge
                }
                '>' => Sym::Gt,
                '+' => Sym::Plus,
                '-' => Sym::Minus,
                '*' => Sym::Star,
                '/' => Sym::Slash,
                '%' => Sym::Percent,
                '(' => Sym::LParen,
                ')' => Sym::RParen,
                ',' => Sym::Comma,
                '!' if at(i) == Some('=') => {
                    return Err(error(column, "unexpected '!=': write <> for not equal"))
                }
                '"' => {
                    return Err(error(
                        column,
                        "unexpected '\"': string literals are in single quotes",
                    ))
                }
                other => {
                    return Err(error(
                        column,
                        format!("unexpected character '{}'", other.escape_debug()),
                    ))
                }
            };
            Tok::Sym(sym)
        };
        out.push(Token {
            tok,
            column,
            text: chars[start..i].iter().collect(),
        });
    }
    out.push(Token {
        tok: Tok::End,
        column: len + 1,
        text: String::new(),
    });
    Ok(out)
}

/// Lexes a numeric literal starting at `chars[*i]` (a digit, or '.' before a digit).
fn lex_number(chars: &[char], i: &mut usize) -> Result<Tok, SelectorError> {
    let start = *i;
    let column = start + 1;
    let len = chars.len();
    let digits = |i: &mut usize, radix: u32| {
        while *i < len && chars[*i].is_digit(radix) {
            *i += 1;
        }
    };
    let text = |from: usize, to: usize| chars[from..to].iter().collect::<String>();
    let out_of_range = |to: usize| {
        error(
            column,
            format!("integer literal '{}' is out of range", text(start, to)),
        )
    };
    if chars[start] == '0' && matches!(chars.get(start + 1), Some('x' | 'X')) {
        *i = start + 2;
        digits(i, 16);
        if *i == start + 2 {
            return Err(error(column, "expected hex digits after '0x'"));
        }
        let value = u64::from_str_radix(&text(start + 2, *i), 16)
            .ok()
            .filter(|v| *v <= i64::MAX as u64)
            .ok_or_else(|| out_of_range(*i))?;
        return Ok(Tok::Int(value));
    }
    digits(i, 10);
    let mut float = false;
    if *i < len && chars[*i] == '.' {
        float = true;
        *i += 1;
        digits(i, 10);
    }
    if *i < len && matches!(chars[*i], 'e' | 'E') {
        let mut j = *i + 1;
        if j < len && matches!(chars[j], '+' | '-') {
            j += 1;
        }
        if j < len && chars[j].is_ascii_digit() {
            float = true;
            *i = j;
            digits(i, 10);
        }
    }
    let body = text(start, *i);
    if float {
        return body
            .parse::<f64>()
            .map(Tok::Float)
            .map_err(|_| error(column, format!("invalid number '{body}'")));
    }
    if *i < len && matches!(chars[*i], 'l' | 'L') {
        *i += 1;
    }
    if body.len() > 1 && body.starts_with('0') {
        if !body.chars().all(|c| c.is_digit(8)) {
            return Err(error(
                column,
                format!("invalid octal literal '{body}' (a leading 0 means octal)"),
            ));
        }
        return u64::from_str_radix(&body, 8)
            .ok()
            .filter(|v| *v <= i64::MAX as u64)
            .map(Tok::Int)
            .ok_or_else(|| out_of_range(*i));
    }
    Ok(match body.parse::<u64>() {
        Ok(v) => Tok::Int(v),
        // Too big even for -2^63: ActiveMQ keeps it as a BigDecimal; a double will do.
        Err(_) => Tok::Float(body.parse::<f64>().unwrap_or(f64::INFINITY)),
    })
}

// ---------------------------------------------------------------------------------------------
// Expressions

#[derive(Debug, Clone)]
enum Expr {
    Lit(Lit),
    Prop(Prop),
    Neg(Box<Expr>),
    Arith(ArithOp, Box<Expr>, Box<Expr>),
    Cmp(CmpOp, Box<Expr>, Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Between {
        negated: bool,
        value: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
    },
    In {
        negated: bool,
        value: Box<Expr>,
        list: Vec<String>,
    },
    Like {
        negated: bool,
        value: Box<Expr>,
        /// Boxed: every expression node is as large as the largest variant, and parsing and
        /// evaluation recurse through them.
        pattern: Box<Pattern>,
    },
    IsNull {
        negated: bool,
        value: Box<Expr>,
    },
}

#[derive(Debug, Clone)]
enum Lit {
    Bool(bool),
    Long(i64),
    Double(f64),
    Str(String),
}

#[derive(Debug, Clone)]
enum Prop {
    Header(String),
    MessageId,
    Destination,
    DeliveryMode,
    Priority,
    Timestamp,
    Expiration,
    Redelivered,
    DeliveryCount,
    /// `JMSXGroupSeq`: the header, or 0 without one (a JMS message always has the property).
    GroupSeq,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArithOp {
    Add,
    Sub,
    Mul,
    /// Always in floating point, as ActiveMQ divides (`5 / 2` is 2.5).
    Div,
    /// `%`: integer remainder of two integers, else floating point (Java's `%`).
    Rem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn is_equality(self) -> bool {
        matches!(self, CmpOp::Eq | CmpOp::Ne)
    }

    fn holds(self, ordering: Ordering) -> bool {
        match self {
            CmpOp::Eq => ordering == Ordering::Equal,
            CmpOp::Ne => ordering != Ordering::Equal,
            CmpOp::Lt => ordering == Ordering::Less,
            CmpOp::Le => ordering != Ordering::Greater,
            CmpOp::Gt => ordering == Ordering::Greater,
            CmpOp::Ge => ordering != Ordering::Less,
        }
    }
}

/// What an expression is known to produce at parse time, for ActiveMQ-style type errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Num,
    Str,
    /// A property or `JMSDeliveryMode`: known only per message.
    Any,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Bool => "a condition",
            Kind::Num => "a number",
            Kind::Str => "a string",
            Kind::Any => "a property",
        }
    }
}

fn resolve(name: &str) -> (Prop, Kind) {
    match name {
        "JMSMessageID" => (Prop::MessageId, Kind::Str),
        "JMSDestination" => (Prop::Destination, Kind::Str),
        "JMSDeliveryMode" => (Prop::DeliveryMode, Kind::Any),
        "JMSPriority" => (Prop::Priority, Kind::Num),
        "JMSTimestamp" => (Prop::Timestamp, Kind::Num),
        "JMSExpiration" => (Prop::Expiration, Kind::Num),
        "JMSRedelivered" => (Prop::Redelivered, Kind::Bool),
        "JMSXDeliveryCount" => (Prop::DeliveryCount, Kind::Num),
        // When the broker took the message in: its stored timestamp, as OpenWire shows it.
        "JMSActiveMQBrokerInTime" => (Prop::Timestamp, Kind::Num),
        "JMSXGroupSeq" => (Prop::GroupSeq, Kind::Any),
        "JMSCorrelationID" => (Prop::Header("correlation-id".into()), Kind::Any),
        "JMSType" => (Prop::Header(super::JMS_TYPE_HEADER.into()), Kind::Any),
        "JMSReplyTo" => (Prop::Header(super::REPLY_TO_HEADER.into()), Kind::Any),
        other => (Prop::Header(other.into()), Kind::Any),
    }
}

/// A compiled LIKE pattern, matched as a set of states advanced in parallel (one bit per
/// pattern position), so a match costs O(len(text) × len(pattern) / 64) whatever the pattern:
/// a backtracking matcher costs len(text) × len(pattern) on `'%aaa…ab'` against `aaa…a`, and
/// selectors are evaluated under the broker core's lock.
#[derive(Debug, Clone)]
struct Pattern {
    /// How many tokens the pattern has, each run of `%` counted as one (so no two `%` are
    /// adjacent); state `len` is the match.
    len: usize,
    /// Bits `j` where token `j` is `%`.
    any: Vec<u64>,
    /// Bits `j` where token `j` is `_`.
    one: Vec<u64>,
    /// Per character in the pattern: bits `j` where token `j` is that character, as (word,
    /// bits) for the words that have any, so the masks take O(len) memory in all.
    chars: std::collections::HashMap<char, Vec<(usize, u64)>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatTok {
    /// `%`: any run of characters.
    Any,
    /// `_`: exactly one character.
    One,
    Char(char),
}

impl Pattern {
    /// As ActiveMQ reads a pattern: the escape character escapes only a `%`, a `_` or
    /// itself; anywhere else (last, say) it stands for itself (and is a wildcard if it is one).
    fn compile(pattern: &str, escape: Option<char>) -> Pattern {
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            let escapes_next = Some(c) == escape
                && chars
                    .peek()
                    .is_some_and(|&next| next == '%' || next == '_' || next == c);
            let tok = if escapes_next {
                PatTok::Char(chars.next().unwrap_or(c))
            } else if c == '%' {
                if tokens.last() == Some(&PatTok::Any) {
                    continue;
                }
                PatTok::Any
            } else if c == '_' {
                PatTok::One
            } else {
                PatTok::Char(c)
            };
            tokens.push(tok);
        }
        // States 0..=len: state j has matched the first j tokens.
        let words = tokens.len() / 64 + 1;
        let mut pattern = Pattern {
            len: tokens.len(),
            any: vec![0; words],
            one: vec![0; words],
            chars: Default::default(),
        };
        for (j, tok) in tokens.iter().enumerate() {
            let (w, bit) = (j / 64, 1 << (j % 64));
            match tok {
                PatTok::Any => pattern.any[w] |= bit,
                PatTok::One => pattern.one[w] |= bit,
                PatTok::Char(c) => {
                    let mask = pattern.chars.entry(*c).or_default();
                    match mask.last_mut() {
                        Some((last, bits)) if *last == w => *bits |= bit,
                        _ => mask.push((w, bit)),
                    }
                }
            }
        }
        pattern
    }

    /// Whether state `j` is among `states`.
    fn holds(states: &[u64], j: usize) -> bool {
        states[j / 64] & (1 << (j % 64)) != 0
    }

    /// Adds, for each state at a `%`, the state after it (a `%` matches nothing too); no two
    /// `%` are adjacent, so one step closes the set.
    fn skip_any(&self, states: &mut [u64]) {
        let mut carry = 0;
        for (word, any) in states.iter_mut().zip(&self.any) {
            let at_any = *word & any;
            *word |= (at_any << 1) | carry;
            carry = at_any >> 63;
        }
    }

    fn matches(&self, text: &str) -> bool {
        let ends_with_any = self.len > 0 && Self::holds(&self.any, self.len - 1);
        // The states, and those whose token takes the current character: on the stack for
        // patterns of up to 255 tokens (this runs per message, under the core's lock).
        let words = self.any.len();
        let mut small = [0u64; 8];
        let mut large = Vec::new();
        let scratch: &mut [u64] = if 2 * words <= small.len() {
            &mut small[..2 * words]
        } else {
            large.resize(2 * words, 0);
            &mut large
        };
        let (states, advanced) = scratch.split_at_mut(words);
        states[0] = 1;
        self.skip_any(states);
        for c in text.chars() {
            // Past a final `%`, the rest of the text is its own.
            if ends_with_any && Self::holds(states, self.len) {
                return true;
            }
            for ((adv, word), one) in advanced.iter_mut().zip(states.iter()).zip(&self.one) {
                *adv = word & one;
            }
            for &(w, bits) in self.chars.get(&c).into_iter().flatten() {
                advanced[w] |= states[w] & bits;
            }
            // A state at `%` stays (the `%` takes `c`); one whose token takes `c` moves on.
            let mut carry = 0;
            let mut live = false;
            for ((word, adv), any) in states.iter_mut().zip(advanced.iter()).zip(&self.any) {
                *word = (adv << 1) | carry | (*word & any);
                carry = adv >> 63;
                live |= *word != 0;
            }
            if !live {
                return false;
            }
            self.skip_any(states);
        }
        Self::holds(states, self.len)
    }
}

// ---------------------------------------------------------------------------------------------
// Parser

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    /// Open parentheses, `NOT`s and signs being parsed (bounds the parser's recursion).
    nesting: usize,
}

/// A parsed subexpression with what the parser knows about it.
struct Parsed {
    expr: Expr,
    kind: Kind,
    /// Height of the expression tree (a leaf is 0); bounds evaluation's recursion.
    depth: usize,
    /// Where the subexpression starts, for error messages.
    column: usize,
}

// Binding powers of the binary operators, loosest first. `NOT` sits between AND and
// EQUALITY: its operand is a comparison, and it may start only an operand of AND/OR/NOT.
const OR: u8 = 1;
const AND: u8 = 2;
const EQUALITY: u8 = 3;
const COMPARISON: u8 = 4;
const ADDITIVE: u8 = 5;
const MULTIPLICATIVE: u8 = 6;

fn too_deep(column: usize) -> SelectorError {
    error(
        column,
        format!("the selector nests deeper than {MAX_DEPTH} levels"),
    )
}

impl Parser {
    fn peek(&self) -> &Token {
        // The last token is End and is never consumed.
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn advance(&mut self) -> Token {
        let token = self.peek().clone();
        if token.tok != Tok::End {
            self.pos += 1;
        }
        token
    }

    fn eat_kw(&mut self, kw: Kw) -> bool {
        if self.peek().tok == Tok::Kw(kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_sym(&mut self, sym: Sym) -> bool {
        if self.peek().tok == Tok::Sym(sym) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// "expected WHAT after 'PREVIOUS', found 'NEXT'" at the next token.
    fn expected(&self, what: &str) -> SelectorError {
        let next = self.peek();
        let mut message = format!("expected {what}");
        if self.pos > 0 {
            message.push_str(&format!(" after {}", self.tokens[self.pos - 1].show()));
        }
        if next.tok != Tok::End {
            message.push_str(&format!(", found {}", next.show()));
        }
        error(next.column, message)
    }

    fn enter(&mut self, column: usize) -> Result<(), SelectorError> {
        self.nesting += 1;
        if self.nesting > MAX_DEPTH {
            return Err(too_deep(column));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.nesting -= 1;
    }

    fn node(
        &self,
        expr: Expr,
        kind: Kind,
        column: usize,
        at: usize,
        children: &[usize],
    ) -> Result<Parsed, SelectorError> {
        let depth = 1 + children.iter().copied().max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(too_deep(at));
        }
        Ok(Parsed {
            expr,
            kind,
            depth,
            column,
        })
    }

    /// Operands of AND, OR and NOT must be conditions (or properties holding 'true'/'false').
    fn condition(operand: &Parsed, op: &str) -> Result<(), SelectorError> {
        if matches!(operand.kind, Kind::Num | Kind::Str) {
            return Err(error(
                operand.column,
                format!("{op} needs a condition, not {}", operand.kind.noun()),
            ));
        }
        Ok(())
    }

    fn numeric(operand: &Parsed, op: &str) -> Result<(), SelectorError> {
        if matches!(operand.kind, Kind::Bool | Kind::Str) {
            return Err(error(
                operand.column,
                format!("'{op}' needs numbers, not {}", operand.kind.noun()),
            ));
        }
        Ok(())
    }

    /// An operand of an ordering (`<` `>` `<=` `>=`, BETWEEN): not a condition, and not a
    /// string literal that is no number (ActiveMQ refuses `x > 'a'` with "cannot be
    /// compared"; a quoted number, `x > '100'`, which STOMP users write since headers are
    /// text, orders as that number, as it always has here).
    fn ordered(operand: &Parsed, op: &str) -> Result<(), SelectorError> {
        if operand.kind == Kind::Bool {
            return Err(error(
                operand.column,
                format!("{op} compares values, not conditions"),
            ));
        }
        if matches!(&operand.expr, Expr::Lit(Lit::Str(text)) if parse_number(text).is_none()) {
            return Err(error(
                operand.column,
                format!("{op} compares numbers: a string literal cannot be compared with it"),
            ));
        }
        Ok(())
    }

    fn textual(operand: &Parsed, op: &str) -> Result<(), SelectorError> {
        if matches!(operand.kind, Kind::Bool | Kind::Num) {
            return Err(error(
                operand.column,
                format!(
                    "{op} needs a string on its left, not {}",
                    operand.kind.noun()
                ),
            ));
        }
        Ok(())
    }

    /// Parses operators binding at least as tightly as `min`, by precedence climbing: one
    /// parenthesis level costs four stack frames (`expr`, `prefix`, `unary`, `primary`).
    fn expr(&mut self, min: u8) -> Result<Parsed, SelectorError> {
        let mut left = self.prefix(min)?;
        loop {
            let power = match self.peek().tok {
                Tok::Kw(Kw::Or) => OR,
                Tok::Kw(Kw::And) => AND,
                Tok::Sym(Sym::Eq | Sym::Ne) | Tok::Kw(Kw::Is) => EQUALITY,
                Tok::Sym(Sym::Lt | Sym::Le | Sym::Gt | Sym::Ge)
                | Tok::Kw(Kw::Not | Kw::Like | Kw::Between | Kw::In) => COMPARISON,
                Tok::Sym(Sym::Plus | Sym::Minus) => ADDITIVE,
                Tok::Sym(Sym::Star | Sym::Slash | Sym::Percent) => MULTIPLICATIVE,
                _ => return Ok(left),
            };
            if power < min {
                return Ok(left);
            }
            left = self.infix(left, power)?;
        }
    }

    #[inline(never)]
    fn infix(&mut self, left: Parsed, power: u8) -> Result<Parsed, SelectorError> {
        match power {
            OR | AND => self.junction(left, power),
            EQUALITY => self.equality(left),
            COMPARISON => self.comparison(left),
            _ => self.arithmetic(left),
        }
    }

    /// `NOT` where a condition may start (an operand of AND, OR or NOT), else a value.
    fn prefix(&mut self, min: u8) -> Result<Parsed, SelectorError> {
        if min > EQUALITY || self.peek().tok != Tok::Kw(Kw::Not) {
            return self.unary();
        }
        self.negation()
    }

    #[inline(never)]
    fn negation(&mut self) -> Result<Parsed, SelectorError> {
        let column = self.advance().column;
        self.enter(column)?;
        let inner = self.expr(EQUALITY)?;
        self.leave();
        Self::condition(&inner, "NOT")?;
        self.node(
            Expr::Not(Box::new(inner.expr)),
            Kind::Bool,
            column,
            column,
            &[inner.depth],
        )
    }

    /// `first (OP operand)*` as one n-ary node, so long chains stay shallow.
    #[inline(never)]
    fn junction(&mut self, first: Parsed, power: u8) -> Result<Parsed, SelectorError> {
        let (kw, name) = if power == OR {
            (Kw::Or, "OR")
        } else {
            (Kw::And, "AND")
        };
        let column = first.column;
        let at = self.peek().column;
        Self::condition(&first, name)?;
        let mut depth = first.depth;
        let mut items = vec![first.expr];
        while self.eat_kw(kw) {
            let next = self.expr(power + 1)?;
            Self::condition(&next, name)?;
            depth = depth.max(next.depth);
            items.push(next.expr);
        }
        let expr = if kw == Kw::Or {
            Expr::Or(items)
        } else {
            Expr::And(items)
        };
        self.node(expr, Kind::Bool, column, at, &[depth])
    }

    #[inline(never)]
    /// One `=`, `<>` or `IS [NOT] NULL` after `left`.
    fn equality(&mut self, left: Parsed) -> Result<Parsed, SelectorError> {
        let token = self.advance();
        if token.tok == Tok::Kw(Kw::Is) {
            let negated = self.eat_kw(Kw::Not);
            if !self.eat_kw(Kw::Null) {
                return Err(self.expected(if negated { "NULL" } else { "NULL or NOT NULL" }));
            }
            let depth = [left.depth];
            return self.node(
                Expr::IsNull {
                    negated,
                    value: Box::new(left.expr),
                },
                Kind::Bool,
                left.column,
                token.column,
                &depth,
            );
        }
        let op = if token.tok == Tok::Sym(Sym::Eq) {
            CmpOp::Eq
        } else {
            CmpOp::Ne
        };
        let right = self.expr(COMPARISON)?;
        let bool_with_other =
            |a: Kind, b: Kind| a == Kind::Bool && matches!(b, Kind::Num | Kind::Str);
        if bool_with_other(left.kind, right.kind) || bool_with_other(right.kind, left.kind) {
            let (cond, other) = if left.kind == Kind::Bool {
                (&left, &right)
            } else {
                (&right, &left)
            };
            return Err(error(
                cond.column.min(other.column),
                format!(
                    "{} cannot be compared with {}",
                    cond.kind.noun(),
                    other.kind.noun()
                ),
            ));
        }
        let depth = [left.depth, right.depth];
        self.node(
            Expr::Cmp(op, Box::new(left.expr), Box::new(right.expr)),
            Kind::Bool,
            left.column,
            token.column,
            &depth,
        )
    }

    #[inline(never)]
    /// One `<` `>` `<=` `>=` `[NOT] LIKE` `[NOT] BETWEEN` `[NOT] IN` after `left`.
    fn comparison(&mut self, left: Parsed) -> Result<Parsed, SelectorError> {
        let at = self.peek().column;
        let op = match self.peek().tok {
            Tok::Sym(Sym::Lt) => Some(CmpOp::Lt),
            Tok::Sym(Sym::Le) => Some(CmpOp::Le),
            Tok::Sym(Sym::Gt) => Some(CmpOp::Gt),
            Tok::Sym(Sym::Ge) => Some(CmpOp::Ge),
            _ => None,
        };
        if let Some(op) = op {
            let symbol = self.advance().text;
            let right = self.expr(ADDITIVE)?;
            for side in [&left, &right] {
                Self::ordered(side, &format!("'{symbol}'"))?;
            }
            let depth = [left.depth, right.depth];
            return self.node(
                Expr::Cmp(op, Box::new(left.expr), Box::new(right.expr)),
                Kind::Bool,
                left.column,
                at,
                &depth,
            );
        }
        let negated = self.eat_kw(Kw::Not);
        match self.peek().tok {
            Tok::Kw(Kw::Like) => {
                self.pos += 1;
                self.like(left, negated, at)
            }
            Tok::Kw(Kw::Between) => {
                self.pos += 1;
                self.between(left, negated, at)
            }
            Tok::Kw(Kw::In) => {
                self.pos += 1;
                self.in_list(left, negated, at)
            }
            _ => Err(self.expected("LIKE, BETWEEN or IN")),
        }
    }

    #[inline(never)]
    fn like(&mut self, left: Parsed, negated: bool, at: usize) -> Result<Parsed, SelectorError> {
        Self::textual(&left, "LIKE")?;
        let Tok::Str(pattern) = self.peek().tok.clone() else {
            return Err(self.expected("a string literal pattern"));
        };
        self.advance();
        let mut escape = None;
        if self.eat_kw(Kw::Escape) {
            let token = self.peek().clone();
            let Tok::Str(text) = &token.tok else {
                return Err(self.expected("a one-character string literal"));
            };
            let mut chars = text.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => escape = Some(c),
                _ => {
                    return Err(error(
                        token.column,
                        format!(
                            "the ESCAPE string must be exactly one character, not {}",
                            token.show()
                        ),
                    ))
                }
            }
            self.pos += 1;
        }
        let pattern = Box::new(Pattern::compile(&pattern, escape));
        let depth = [left.depth];
        self.node(
            Expr::Like {
                negated,
                value: Box::new(left.expr),
                pattern,
            },
            Kind::Bool,
            left.column,
            at,
            &depth,
        )
    }

    #[inline(never)]
    fn between(&mut self, left: Parsed, negated: bool, at: usize) -> Result<Parsed, SelectorError> {
        let low = self.expr(ADDITIVE)?;
        if !self.eat_kw(Kw::And) {
            return Err(self.expected("AND"));
        }
        let high = self.expr(ADDITIVE)?;
        for side in [&left, &low, &high] {
            Self::ordered(side, "BETWEEN")?;
        }
        let depth = [left.depth, low.depth, high.depth];
        self.node(
            Expr::Between {
                negated,
                value: Box::new(left.expr),
                low: Box::new(low.expr),
                high: Box::new(high.expr),
            },
            Kind::Bool,
            left.column,
            at,
            &depth,
        )
    }

    #[inline(never)]
    fn in_list(&mut self, left: Parsed, negated: bool, at: usize) -> Result<Parsed, SelectorError> {
        Self::textual(&left, "IN")?;
        if !self.eat_sym(Sym::LParen) {
            return Err(self.expected("'('"));
        }
        let mut list = Vec::new();
        loop {
            let Tok::Str(item) = self.peek().tok.clone() else {
                return Err(self.expected("a string literal"));
            };
            self.pos += 1;
            list.push(item);
            if self.eat_sym(Sym::RParen) {
                break;
            }
            if !self.eat_sym(Sym::Comma) {
                return Err(self.expected("',' or ')'"));
            }
        }
        let depth = [left.depth];
        self.node(
            Expr::In {
                negated,
                value: Box::new(left.expr),
                list,
            },
            Kind::Bool,
            left.column,
            at,
            &depth,
        )
    }

    #[inline(never)]
    /// One `+` `-` `*` `/` `%` after `left`.
    fn arithmetic(&mut self, left: Parsed) -> Result<Parsed, SelectorError> {
        let token = self.advance();
        let (op, right) = match token.tok {
            Tok::Sym(Sym::Plus) => (ArithOp::Add, self.expr(MULTIPLICATIVE)?),
            Tok::Sym(Sym::Minus) => (ArithOp::Sub, self.expr(MULTIPLICATIVE)?),
            Tok::Sym(Sym::Star) => (ArithOp::Mul, self.unary()?),
            Tok::Sym(Sym::Percent) => (ArithOp::Rem, self.unary()?),
            _ => (ArithOp::Div, self.unary()?),
        };
        Self::numeric(&left, &token.text)?;
        Self::numeric(&right, &token.text)?;
        let depth = [left.depth, right.depth];
        self.node(
            Expr::Arith(op, Box::new(left.expr), Box::new(right.expr)),
            Kind::Num,
            left.column,
            token.column,
            &depth,
        )
    }

    fn unary(&mut self) -> Result<Parsed, SelectorError> {
        match self.peek().tok {
            Tok::Sym(Sym::Minus) => self.signed(true),
            Tok::Sym(Sym::Plus) => self.signed(false),
            Tok::Sym(Sym::LParen) => self.parenthesized(),
            _ => self.primary(),
        }
    }

    #[inline(never)]
    fn signed(&mut self, negate: bool) -> Result<Parsed, SelectorError> {
        let token = self.advance();
        // -9223372036854775808 is a long although 9223372036854775808 is not.
        if negate && self.peek().tok == Tok::Int(1 << 63) {
            self.pos += 1;
            return self.node(
                Expr::Lit(Lit::Long(i64::MIN)),
                Kind::Num,
                token.column,
                token.column,
                &[],
            );
        }
        self.enter(token.column)?;
        let inner = self.unary()?;
        self.leave();
        Self::numeric(&inner, &token.text)?;
        if !negate {
            return Ok(Parsed {
                column: token.column,
                ..inner
            });
        }
        let expr = match inner.expr {
            Expr::Lit(Lit::Long(v)) if v != i64::MIN => Expr::Lit(Lit::Long(-v)),
            Expr::Lit(Lit::Double(v)) => Expr::Lit(Lit::Double(-v)),
            other => Expr::Neg(Box::new(other)),
        };
        let children: &[usize] = if matches!(expr, Expr::Lit(_)) {
            &[]
        } else {
            &[inner.depth]
        };
        self.node(expr, Kind::Num, token.column, token.column, children)
    }

    /// `( expression )`, kept apart from `primary` so the recursion's frames stay small.
    #[inline(never)]
    fn parenthesized(&mut self) -> Result<Parsed, SelectorError> {
        let column = self.peek().column;
        self.pos += 1;
        self.enter(column)?;
        let inner = self.expr(OR)?;
        self.leave();
        if !self.eat_sym(Sym::RParen) {
            return Err(self.unclosed(column));
        }
        Ok(Parsed { column, ..inner })
    }

    #[cold]
    #[inline(never)]
    fn unclosed(&self, column: usize) -> SelectorError {
        self.expected(&format!("')' to close the '(' at column {column}"))
    }

    #[inline(never)]
    fn primary(&mut self) -> Result<Parsed, SelectorError> {
        let token = self.peek().clone();
        let (expr, kind) = match token.tok {
            Tok::Str(s) => (Expr::Lit(Lit::Str(s)), Kind::Str),
            Tok::Int(v) => match i64::try_from(v) {
                Ok(v) => (Expr::Lit(Lit::Long(v)), Kind::Num),
                Err(_) => (Expr::Lit(Lit::Double(v as f64)), Kind::Num),
            },
            Tok::Float(v) => (Expr::Lit(Lit::Double(v)), Kind::Num),
            Tok::Kw(Kw::True) => (Expr::Lit(Lit::Bool(true)), Kind::Bool),
            Tok::Kw(Kw::False) => (Expr::Lit(Lit::Bool(false)), Kind::Bool),
            Tok::Kw(Kw::Null) => {
                return Err(error(
                    token.column,
                    "NULL is only allowed in IS NULL and IS NOT NULL",
                ))
            }
            Tok::Ident(name) => {
                let (prop, kind) = resolve(&name);
                (Expr::Prop(prop), kind)
            }
            _ => return Err(self.expected("a value")),
        };
        self.pos += 1;
        Ok(Parsed {
            expr,
            kind,
            depth: 0,
            column: token.column,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation

/// A value during evaluation; `Null` is SQL's NULL (and UNKNOWN for conditions).
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Null,
    Bool(bool),
    Long(i64),
    Double(f64),
    Str(&'a str),
    /// `JMSDeliveryMode`: `'PERSISTENT'` when true, `'NON_PERSISTENT'` when false; text only.
    Mode(bool),
    /// A Java char property: equal to no literal, no number, no text (as in ActiveMQ, whose
    /// `Character` compares with nothing a selector can write), only to another char.
    Char(&'a str),
    /// A JMS client's map or list property, in its stored form: equal only to the same map or
    /// list (as Java's `equals`), never ordered.
    Opaque(&'a str),
}

#[derive(Debug, Clone, Copy)]
enum Num {
    Long(i64),
    Double(f64),
}

impl Num {
    fn float(self) -> f64 {
        match self {
            Num::Long(v) => v as f64,
            Num::Double(v) => v,
        }
    }
}

struct Ctx<'a> {
    message: &'a Message,
    redeliveries: u32,
}

impl<'a> Ctx<'a> {
    fn prop(&self, prop: &'a Prop) -> Value<'a> {
        let m = self.message;
        let text = |s: &'a str| {
            if s.is_empty() {
                Value::Null
            } else {
                Value::Str(s)
            }
        };
        let header = |name: &str| {
            m.headers
                .iter()
                .find(|h| h.name == name)
                .and_then(|h| typed(h.kind, &h.value))
        };
        match prop {
            Prop::Header(name) => header(name).unwrap_or(Value::Null),
            Prop::GroupSeq => header("JMSXGroupSeq").unwrap_or(Value::Long(0)),
            Prop::MessageId => text(&m.message_id),
            // A dead-lettered message names where it came from, as ActiveMQ's
            // `getOriginalDestination()` first.
            Prop::Destination => {
                header(ORIGINAL_DESTINATION).unwrap_or_else(|| text(&m.destination))
            }
            Prop::DeliveryMode => Value::Mode(m.persistent),
            Prop::Priority => Value::Long(i64::from(m.priority)),
            Prop::Timestamp => Value::Long(m.timestamp),
            Prop::Expiration => Value::Long(m.expiration),
            Prop::Redelivered => Value::Bool(self.redeliveries > 0),
            Prop::DeliveryCount => Value::Long(i64::from(self.redeliveries) + 1),
        }
    }
}

/// The header "original-destination": set on a dead-lettered message.
const ORIGINAL_DESTINATION: &str = "original-destination";

/// A header's value as its type says: a JMS client's typed property (an int, a boolean...)
/// is that, not its text; a string (every STOMP header) stays a string. `None` for a property
/// set to null.
fn typed(kind: i32, value: &str) -> Option<Value<'_>> {
    const INTEGERS: [PropertyType; 4] = [
        PropertyType::Byte,
        PropertyType::Short,
        PropertyType::Int,
        PropertyType::Long,
    ];
    let kind = PropertyType::try_from(kind).unwrap_or(PropertyType::String);
    Some(match kind {
        PropertyType::Null => return None,
        PropertyType::Boolean => Value::Bool(value.eq_ignore_ascii_case("true")),
        PropertyType::Char => Value::Char(value),
        PropertyType::Openwire => Value::Opaque(value),
        k if INTEGERS.contains(&k) => value.parse().map_or(Value::Str(value), Value::Long),
        PropertyType::Double => value.parse().map_or(Value::Str(value), Value::Double),
        // A float widened to a double, as Java compares it: 0.1f is not 0.1.
        PropertyType::Float => value
            .parse::<f32>()
            .map_or(Value::Str(value), |v| Value::Double(f64::from(v))),
        _ => Value::Str(value),
    })
}

/// A string as a number, if it is one: `10`, `-3`, `2.5`, `1e3` (not `0x1F`, `inf`, `NaN`).
fn parse_number(s: &str) -> Option<Num> {
    if !s.bytes().any(|b| b.is_ascii_digit())
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'))
    {
        return None;
    }
    match s.parse::<i64>() {
        Ok(v) => Some(Num::Long(v)),
        Err(_) => s.parse::<f64>().ok().map(Num::Double),
    }
}

fn as_number(v: Value<'_>) -> Option<Num> {
    match v {
        Value::Long(v) => Some(Num::Long(v)),
        Value::Double(v) => Some(Num::Double(v)),
        Value::Str(s) => parse_number(s),
        Value::Null | Value::Bool(_) | Value::Mode(_) | Value::Char(_) | Value::Opaque(_) => None,
    }
}

fn as_text(v: Value<'_>) -> Option<&str> {
    match v {
        Value::Str(s) => Some(s),
        Value::Mode(true) => Some("PERSISTENT"),
        Value::Mode(false) => Some("NON_PERSISTENT"),
        _ => None,
    }
}

/// A value as a condition: TRUE, FALSE or UNKNOWN (`None`, for a null). Anything that is
/// no boolean is FALSE, as ActiveMQ's boolean cast makes it (`NOT color` holds for a string
/// `color`), except the strings `'true'` and `'false'` (any case), which STOMP headers are.
fn truth(v: Value<'_>) -> Option<bool> {
    match v {
        Value::Null => None,
        Value::Bool(b) => Some(b),
        Value::Str(s) => Some(s.eq_ignore_ascii_case("true")),
        _ => Some(false),
    }
}

/// A value as a boolean, if it is one: a boolean, or the string `'true'` or `'false'`.
fn as_bool(v: Value<'_>) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(b),
        Value::Str(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::Str(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

fn from_truth(t: Option<bool>) -> Value<'static> {
    t.map_or(Value::Null, Value::Bool)
}

fn compare_numbers(a: Num, b: Num) -> Option<Ordering> {
    match (a, b) {
        (Num::Long(a), Num::Long(b)) => Some(a.cmp(&b)),
        _ => a.float().partial_cmp(&b.float()),
    }
}

/// TRUE, FALSE or UNKNOWN (a null on either side). Values that cannot be compared (a string
/// that is no number with a number, a boolean with a number, or ordered) are not equal: FALSE,
/// and `<>` TRUE, as ActiveMQ answers (JMS 1.1 §3.8.1.1: "the value of the operation is
/// false").
fn compare(op: CmpOp, left: Value<'_>, right: Value<'_>) -> Option<bool> {
    if matches!(left, Value::Null) || matches!(right, Value::Null) {
        return None;
    }
    let unlike = Some(op == CmpOp::Ne);
    match (left, right) {
        (Value::Char(a), Value::Char(b)) => return Some(op.holds(a.cmp(b))),
        (Value::Opaque(a), Value::Opaque(b)) if op.is_equality() => {
            return Some(op.holds(a.cmp(b)))
        }
        (Value::Char(_) | Value::Opaque(_), _) | (_, Value::Char(_) | Value::Opaque(_)) => {
            return unlike
        }
        _ => {}
    }
    if matches!(left, Value::Bool(_)) || matches!(right, Value::Bool(_)) {
        let (Some(a), Some(b)) = (as_bool(left), as_bool(right)) else {
            return unlike;
        };
        return if op.is_equality() {
            Some(op.holds(a.cmp(&b)))
        } else {
            unlike
        };
    }
    if let (Some(a), Some(b)) = (as_text(left), as_text(right)) {
        if op.is_equality() {
            return Some(op.holds(a.cmp(b)));
        }
        // Numeric when both are numbers (STOMP headers are text); else in text order, as
        // ActiveMQ orders two strings.
        let ordering = match (parse_number(a), parse_number(b)) {
            (Some(x), Some(y)) => compare_numbers(x, y),
            _ => Some(a.cmp(b)),
        };
        return ordering.map_or(unlike, |o| Some(op.holds(o)));
    }
    match (as_number(left), as_number(right)) {
        (Some(a), Some(b)) => compare_numbers(a, b).map_or(unlike, |o| Some(op.holds(o))),
        _ => unlike,
    }
}

fn arithmetic(op: ArithOp, left: Value<'_>, right: Value<'_>) -> Value<'static> {
    let (Some(a), Some(b)) = (as_number(left), as_number(right)) else {
        return Value::Null;
    };
    let float = |x: f64, y: f64| match op {
        ArithOp::Add => x + y,
        ArithOp::Sub => x - y,
        ArithOp::Mul => x * y,
        ArithOp::Div => x / y,
        ArithOp::Rem => x % y,
    };
    match (a, b) {
        (Num::Long(x), Num::Long(y)) => {
            let exact = match op {
                ArithOp::Add => x.checked_add(y),
                ArithOp::Sub => x.checked_sub(y),
                ArithOp::Mul => x.checked_mul(y),
                // Java's integer remainder by zero throws: the selector does not match.
                ArithOp::Rem if y == 0 => return Value::Null,
                ArithOp::Rem => x.checked_rem(y),
                ArithOp::Div => None,
            };
            // Division is in floating point (see `ArithOp::Div`); Java would wrap around on
            // overflow, and continuing in floating point is kinder.
            exact.map_or_else(|| Value::Double(float(x as f64, y as f64)), Value::Long)
        }
        _ => Value::Double(float(a.float(), b.float())),
    }
}

fn and3(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    }
}

impl Expr {
    fn eval<'a>(&'a self, cx: &Ctx<'a>) -> Value<'a> {
        match self {
            Expr::Lit(Lit::Bool(b)) => Value::Bool(*b),
            Expr::Lit(Lit::Long(v)) => Value::Long(*v),
            Expr::Lit(Lit::Double(v)) => Value::Double(*v),
            Expr::Lit(Lit::Str(s)) => Value::Str(s),
            Expr::Prop(prop) => cx.prop(prop),
            Expr::Neg(inner) => match as_number(inner.eval(cx)) {
                Some(Num::Long(v)) => v
                    .checked_neg()
                    .map_or(Value::Double(-(v as f64)), Value::Long),
                Some(Num::Double(v)) => Value::Double(-v),
                None => Value::Null,
            },
            Expr::Arith(op, l, r) => arithmetic(*op, l.eval(cx), r.eval(cx)),
            Expr::Cmp(op, l, r) => from_truth(compare(*op, l.eval(cx), r.eval(cx))),
            Expr::And(items) => {
                let mut result = Some(true);
                for item in items {
                    result = and3(result, truth(item.eval(cx)));
                    if result == Some(false) {
                        break;
                    }
                }
                from_truth(result)
            }
            Expr::Or(items) => {
                // a OR b = NOT (NOT a AND NOT b)
                let mut none = Some(true);
                for item in items {
                    none = and3(none, truth(item.eval(cx)).map(|b| !b));
                    if none == Some(false) {
                        break;
                    }
                }
                from_truth(none.map(|b| !b))
            }
            Expr::Not(inner) => from_truth(truth(inner.eval(cx)).map(|b| !b)),
            Expr::Between {
                negated,
                value,
                low,
                high,
            } => {
                let v = value.eval(cx);
                let inside = and3(
                    compare(CmpOp::Ge, v, low.eval(cx)),
                    compare(CmpOp::Le, v, high.eval(cx)),
                );
                from_truth(inside.map(|b| b != *negated))
            }
            Expr::In {
                negated,
                value,
                list,
            } => from_truth(
                as_text(value.eval(cx)).map(|s| list.iter().any(|item| item == s) != *negated),
            ),
            Expr::Like {
                negated,
                value,
                pattern,
            } => from_truth(match value.eval(cx) {
                Value::Null => None,
                // A number or boolean is no string: FALSE, as in ActiveMQ (NOT LIKE: TRUE).
                v => Some(as_text(v).is_some_and(|s| pattern.matches(s)) != *negated),
            }),
            Expr::IsNull { negated, value } => {
                Value::Bool(matches!(value.eval(cx), Value::Null) != *negated)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Header;
    use proptest::prelude::*;

    fn message() -> Message {
        let headers = [
            ("color", "red"),
            ("size", "10"),
            ("weight", "2.5"),
            ("flag", "true"),
            ("empty", ""),
            ("path", "50%_off"),
            ("name", "O'Brien"),
            ("multi", "aXbYbZc"),
            ("numstr", "010"),
            ("bang", "a!b!"),
            ("under", "_foo"),
            ("a", "1"),
            ("b", "0"),
            ("c", "0"),
            ("jms-type", "order"),
            ("correlation-id", "c-1"),
            ("JMSXGroupID", "g1"),
            ("unicode", "héllo"),
            ("color", "second value is ignored"),
        ];
        // A JMS property set to null: as if missing.
        let unset = Header {
            name: "unset".into(),
            value: String::new(),
            kind: PropertyType::Null as i32,
        };
        Message {
            message_id: "ID:n-1:1".into(),
            destination: "queue://orders".into(),
            persistent: true,
            expiration: 0,
            timestamp: 1000,
            priority: 7,
            redelivery_count: 0,
            headers: headers
                .iter()
                .map(|(name, value)| Header::text(*name, *value))
                .chain([unset])
                .collect(),
            ..Message::default()
        }
    }

    const CASES: &[(&str, bool)] = &[
        // Empty selectors match everything.
        ("", true),
        ("  \t\n", true),
        ("/* only a comment */", true),
        // = and <> on strings; values and identifiers are case-sensitive, keywords are not.
        ("color = 'red'", true),
        ("color = 'blue'", false),
        ("color <> 'blue'", true),
        ("color <> 'red'", false),
        ("color = 'RED'", false),
        ("Color = 'red'", false),
        ("color = 'red' and size = 10", true),
        ("color in ('red') And size Between 1 aNd 10 oR FALSE", true),
        ("color is not null", true),
        ("name = 'O''Brien'", true),
        ("empty = ''", true),
        ("unicode = 'héllo'", true),
        // Numbers: every comparison operator, literal forms, conversions of headers.
        ("size = 10", true),
        ("size <> 10", false),
        ("size > 9", true),
        ("size > 10", false),
        ("size >= 10", true),
        ("size < 10", false),
        ("size < 11", true),
        ("size <= 10", true),
        ("size = 10.0", true),
        ("size = 10L", true),
        ("size = 1e1", true),
        ("size = 0.1E2", true),
        ("size = 0xA", true),
        ("size = 0X0a", true),
        ("size = 012", true),
        ("weight > 2", true),
        ("weight = 2.5", true),
        ("weight = .25e1", true),
        ("weight < 2.6", true),
        ("numstr = 10", true), // a header is decimal, not octal
        ("-9223372036854775808 < 0", true),
        ("9223372036854775808 > 0", true), // too big for a long: a double
        // Numbers and strings.
        ("size = '10'", true),    // string with string: exact text
        ("size = '10.0'", false), // ... so not equal
        ("'5' = 5", true),        // string with number: numeric when it parses
        ("size > '9'", true),     // a quoted number orders as that number
        ("size BETWEEN '5' AND '10'", true),
        ("size = 'ten'", false),
        // Values that cannot be compared are not equal: FALSE (`<>` TRUE), as in ActiveMQ.
        ("color = 1", false),
        ("NOT (color = 1)", true),
        ("color <> 1", true),
        ("color > 1", false),
        ("NOT (color BETWEEN 1 AND 5)", true),
        // Two headers: numeric when both are numbers, else in text order.
        ("size < weight", false),
        ("weight < size", true),
        ("color > name", true), // 'red' > 'O''Brien'
        ("color < name", false),
        // Arithmetic, precedence and associativity.
        ("size + 1 = 11", true),
        ("size - 1 = 9", true),
        ("size * 2 = 20", true),
        ("size / 3 = 3", false), // no integer division: ActiveMQ divides as decimals
        ("size / 4 = 2.5", true),
        ("size / 4.0 = 2.5", true),
        ("size % 3 = 1", true),
        ("size % 3 = 1.0", true),
        ("weight % 2 = 0.5", true),
        ("2 + 7 % 4 * 2 = 8", true),
        ("size % 0 IS NULL", true),
        ("weight * 2 = 5", true),
        ("-size = -10", true),
        ("+size = 10", true),
        ("- -1 = 1", true),
        ("2 + 3 * 4 = 14", true),
        ("(2 + 3) * 4 = 20", true),
        ("10 - 2 - 3 = 5", true),
        ("12 / 2 / 3 = 2", true),
        ("1 - -1 = 2", true),
        ("size / 0 = 1", false),
        ("size / 0 > 1000", true),   // infinity, as Java's double division
        ("size / 0.0 > 1000", true), // infinity
        ("9223372036854775807 + 1 > 0", true), // overflow goes on in floating point
        ("color + 1 IS NULL", true),
        ("missing + 1 IS NULL", true),
        // JMSXGroupSeq is 0 on a message outside any group, as in ActiveMQ.
        ("JMSXGroupSeq = 0", true),
        ("JMSXGroupSeq IS NULL", false),
        // Missing properties and three-valued logic.
        ("missing = 1", false),
        ("missing <> 1", false),
        ("NOT (missing = 1)", false),
        ("missing = 'x'", false),
        ("missing IS NULL", true),
        ("missing IS NOT NULL", false),
        ("unset IS NULL", true),
        ("unset IS NOT NULL", false),
        ("unset = ''", false),
        ("unset <> ''", false),
        ("color IS NULL", false),
        ("empty IS NULL", false),
        ("missing = 1 OR size = 10", true),  // UNKNOWN OR TRUE
        ("missing = 1 OR size = 11", false), // UNKNOWN OR FALSE
        ("NOT (missing = 1 OR size = 11)", false),
        ("missing = 1 AND size = 10", false), // UNKNOWN AND TRUE
        ("NOT (missing = 1 AND size = 10)", false),
        ("NOT (missing = 1 AND size = 11)", true), // NOT (UNKNOWN AND FALSE)
        ("missing = missing", false),
        // AND binds tighter than OR; NOT looser than comparisons.
        ("a = 1 OR b = 2 AND c = 3", true),
        ("(a = 1 OR b = 2) AND c = 3", false),
        ("b = 2 AND c = 3 OR a = 1", true),
        ("NOT size = 10", false),
        ("NOT size = 11", true),
        ("NOT NOT size = 10", true),
        ("NOT size = 10 OR a = 1", true),
        ("TRUE OR FALSE AND FALSE", true),
        ("size = 10 AND color = 'red' OR missing = 1", true),
        ("size > 5 = TRUE", true),
        // BETWEEN.
        ("size BETWEEN 5 AND 10", true),
        ("size BETWEEN 10 AND 10", true),
        ("size BETWEEN 11 AND 20", false),
        ("size NOT BETWEEN 11 AND 20", true),
        ("size NOT BETWEEN 5 AND 10", false),
        ("weight BETWEEN 2 AND 3", true),
        ("size BETWEEN 2 * 5 AND 5 + 5", true),
        ("size BETWEEN 5 AND 10 AND color = 'red'", true),
        ("missing BETWEEN 1 AND 2", false),
        ("missing NOT BETWEEN 1 AND 2", false),
        ("size BETWEEN missing AND 20", false),
        ("size NOT BETWEEN 11 AND missing", true), // NOT (FALSE AND UNKNOWN)
        ("size NOT BETWEEN 5 AND missing", false), // NOT (TRUE AND UNKNOWN)
        // IN.
        ("color IN ('red', 'green')", true),
        ("color IN ('blue')", false),
        ("color NOT IN ('blue', 'green')", true),
        ("color NOT IN ('red')", false),
        ("missing IN ('a')", false),
        ("missing NOT IN ('a')", false),
        ("JMSType IN ('order', 'invoice')", true),
        ("size IN ('10')", true),
        // LIKE.
        ("color LIKE 'r%'", true),
        ("color LIKE 'r_d'", true),
        ("color LIKE 'r_'", false),
        ("color LIKE '%e%'", true),
        ("color LIKE '%'", true),
        ("color LIKE 'R%'", false),
        ("color LIKE 'red'", true),
        ("color LIKE 're'", false),
        ("color NOT LIKE 'b%'", true),
        ("color NOT LIKE 'r%'", false),
        ("empty LIKE '%'", true),
        ("empty LIKE '_'", false),
        ("multi LIKE 'a%b%c'", true),
        ("multi LIKE 'a%b%d'", false),
        ("multi LIKE '%b_c'", true),
        ("multi LIKE '%%%c'", true),
        ("unicode LIKE 'h_llo'", true),
        ("name LIKE 'O''B%'", true),
        ("path LIKE '50%off'", true),
        ("path LIKE '50\\%\\_off' ESCAPE '\\'", true),
        ("path LIKE '50!%!_off' ESCAPE '!'", true),
        ("path LIKE '50!%%' ESCAPE '!'", true),
        ("color LIKE '50!%%' ESCAPE '!'", false),
        // As in ActiveMQ, the escape character escapes only '%', '_' and itself; before
        // anything else, or last, it is itself.
        ("path LIKE '5!0%' ESCAPE '!'", false),
        ("path LIKE '50%!!' ESCAPE '!'", false),
        ("path LIKE '!%%' ESCAPE '!'", false),
        ("bang LIKE 'a!!b!' ESCAPE '!'", true),
        ("bang LIKE 'a!b%' ESCAPE '!'", true),
        ("under LIKE '%_%' ESCAPE '%'", true), // ActiveMQ's SelectorTest
        ("under LIKE '__foo' ESCAPE '_'", true),
        ("missing LIKE '%'", false),
        ("missing NOT LIKE '%'", false),
        ("'abc' LIKE 'a%'", true),
        // Booleans.
        ("TRUE", true),
        ("FALSE", false),
        ("TRUE AND NOT FALSE", true),
        ("flag", true),
        ("NOT flag", false),
        ("flag = TRUE", true),
        ("flag = FALSE", false),
        ("flag <> false", true),
        ("flag = 'true'", true),
        ("color = TRUE", false), // 'red' is no boolean: not equal
        ("NOT (color = TRUE)", true),
        ("color", false), // no boolean: FALSE, as ActiveMQ's boolean cast
        ("NOT color", true),
        ("NOT missing", false),
        ("FLAG = TRUE", false),
        // JMS header fields.
        ("JMSMessageID = 'ID:n-1:1'", true),
        ("JMSMessageID LIKE 'ID:%'", true),
        ("JMSDestination = 'queue://orders'", true),
        ("JMSDeliveryMode = 'PERSISTENT'", true),
        ("JMSDeliveryMode = 'NON_PERSISTENT'", false),
        // Text only, as in ActiveMQ.
        ("JMSDeliveryMode = 2", false),
        ("JMSDeliveryMode IN ('PERSISTENT')", true),
        ("JMSPriority = 7", true),
        ("JMSPriority > 4", true),
        ("JMSPriority BETWEEN 0 AND 4", false),
        ("JMSTimestamp = 1000", true),
        ("JMSTimestamp + 1 = 1001", true),
        ("JMSExpiration = 0", true),
        ("JMSRedelivered = FALSE", true),
        ("NOT JMSRedelivered", true),
        ("JMSXDeliveryCount = 1", true),
        ("JMSCorrelationID = 'c-1'", true),
        ("JMSType = 'order'", true),
        ("JMSXGroupID = 'g1'", true),
        ("JMSReplyTo IS NULL", true),
        ("jmspriority = 7", false), // identifiers are case-sensitive: a missing header
        // Comments.
        ("size = 10 -- trailing comment\n", true),
        ("size--1 = 11", true), // no line end: two minus signs, as in ActiveMQ
        ("size = 10 --1", false),
        ("size /* inline */ = 10", true),
        ("size = 10 -- comment\n AND color = 'blue'", false),
    ];

    #[test]
    fn selector_table() {
        let m = message();
        let mut failures = Vec::new();
        for (text, expected) in CASES {
            match Selector::parse(text) {
                Ok(selector) => {
                    if selector.matches(&m) != *expected {
                        failures.push(format!("{text:?}: expected {expected}"));
                    }
                }
                Err(e) => failures.push(format!("{text:?}: {e}")),
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn redelivery_and_delivery_mode() {
        let mut m = message();
        m.persistent = false;
        m.redelivery_count = 2;
        for (text, expected) in [
            ("JMSRedelivered", true),
            ("JMSRedelivered = TRUE", true),
            ("JMSXDeliveryCount = 3", true),
            ("JMSDeliveryMode = 'NON_PERSISTENT'", true),
            ("JMSDeliveryMode = 1", false),
            ("JMSDeliveryMode = 'PERSISTENT'", false),
        ] {
            assert_eq!(
                Selector::parse(text).unwrap().matches(&m),
                expected,
                "{text}"
            );
        }
        let s = Selector::parse("JMSRedelivered").unwrap();
        assert!(!s.matches_with_redeliveries(&m, 0));
        assert!(s.matches_with_redeliveries(&message(), 1));
    }

    /// A JMS client's typed properties are compared as their types, as ActiveMQ compares
    /// them: an int is no string for LIKE or IN, a boolean is a boolean.
    #[test]
    fn typed_properties_compare_as_their_types() {
        let typed = |name: &str, value: &str, kind: PropertyType| Header {
            name: name.into(),
            value: value.into(),
            kind: kind as i32,
        };
        let m = Message {
            headers: vec![
                typed("code", "3", PropertyType::Int),
                typed("ratio", "0.5", PropertyType::Double),
                typed("tenth", "0.1", PropertyType::Float),
                typed("initial", "x", PropertyType::Char),
                typed("same", "x", PropertyType::Char),
                typed("later", "y", PropertyType::Char),
                typed("map1", "0a0b", PropertyType::Openwire),
                typed("map2", "0a0b", PropertyType::Openwire),
                typed("ok", "true", PropertyType::Boolean),
                typed("a", "abc", PropertyType::String),
                typed("b", "abd", PropertyType::String),
            ],
            ..Message::default()
        };
        for (text, expected) in [
            ("code = 3", true),
            ("code > 2 AND code < 4", true),
            ("code + ratio = 3.5", true),
            ("code LIKE '3%'", false), // no string: FALSE
            ("code NOT LIKE '3%'", true),
            ("code IN ('3')", false), // no string: UNKNOWN
            ("code NOT IN ('1', '2')", false),
            ("ok", true),
            ("ok = TRUE", true),
            ("ok = 1", false),
            ("ratio < 1", true),
            ("tenth = 0.1", false), // a float widened: 0.100000001490116...
            ("tenth > 0.1", true),
            ("initial = 'x'", false), // a Java char: equal to nothing
            ("initial <> 'x'", true),
            ("initial IS NOT NULL", true),
            ("initial = same", true), // two chars compare as chars
            ("initial < later", true),
            ("map1 = map2", true), // the same map
            ("map1 = '0a0b'", false),
            ("map1 > map2", false),
            ("a < b", true), // two strings: in text order
            ("a > b", false),
        ] {
            let selector = Selector::parse(text).unwrap();
            assert_eq!(selector.matches(&m), expected, "{text}");
        }
    }

    /// On a dead-letter queue `JMSDestination` names where the message came from, as
    /// ActiveMQ's `getOriginalDestination()`; `JMSActiveMQBrokerInTime` is when the broker took
    /// it in.
    #[test]
    fn jms_destination_is_the_original_one_on_a_dead_letter_queue() {
        let m = Message {
            destination: "queue://ActiveMQ.DLQ".into(),
            timestamp: 1000,
            headers: vec![Header::text(ORIGINAL_DESTINATION, "queue://orders")],
            ..Message::default()
        };
        for (text, expected) in [
            ("JMSDestination = 'queue://orders'", true),
            ("JMSDestination = 'queue://ActiveMQ.DLQ'", false),
            ("JMSActiveMQBrokerInTime = 1000", true),
        ] {
            let selector = Selector::parse(text).unwrap();
            assert_eq!(selector.matches(&m), expected, "{text}");
        }
    }

    #[test]
    fn empty_messages() {
        let m = Message::default();
        for (text, expected) in [
            ("JMSMessageID IS NULL", true),
            ("JMSDestination IS NULL", true),
            ("JMSPriority = 0", true),
            ("JMSCorrelationID IS NULL", true),
            ("x = 1 OR TRUE", true),
        ] {
            assert_eq!(
                Selector::parse(text).unwrap().matches(&m),
                expected,
                "{text}"
            );
        }
    }

    #[test]
    fn api() {
        let s: Selector = "color = 'red'".parse().unwrap();
        assert_eq!(s.text(), "color = 'red'");
        assert_eq!(s.to_string(), "color = 'red'");
        assert!(!s.matches_all());
        assert!(Selector::parse(" ").unwrap().matches_all());
    }

    const ERRORS: &[(&str, usize, &str)] = &[
        ("color = ", 9, "expected a value after '='"),
        ("color = AND size = 1", 9, "expected a value after '=', found 'AND'"),
        ("AND", 1, "expected a value, found 'AND'"),
        ("color = 'red' AND", 18, "expected a value after 'AND'"),
        ("(size = 10", 11, "expected ')' to close the '(' at column 1 after '10'"),
        ("size = 10)", 10, "expected AND, OR or the end of the selector after '10', found ')'"),
        ("size = 10 color", 11, "expected AND, OR or the end of the selector after '10', found 'color'"),
        ("size 10", 6, "expected an operator or the end of the selector after 'size', found '10'"),
        ("'abc", 1, "unterminated string literal (a quote inside a string is written '')"),
        ("size = 'it's'", 13, "unterminated string literal (a quote inside a string is written '')"),
        ("/* open", 1, "unterminated comment: expected '*/'"),
        ("size != 10", 6, "unexpected '!=': write <> for not equal"),
        ("size = \"10\"", 8, "unexpected '\"': string literals are in single quotes"),
        ("size # 1", 6, "unexpected character '#'"),
        ("size = 0x", 8, "expected hex digits after '0x'"),
        ("size = 09", 8, "invalid octal literal '09' (a leading 0 means octal)"),
        ("size = 0xFFFFFFFFFFFFFFFF", 8, "integer literal '0xFFFFFFFFFFFFFFFF' is out of range"),
        ("color LIKE 5", 12, "expected a string literal pattern after 'LIKE', found '5'"),
        ("color LIKE", 11, "expected a string literal pattern after 'LIKE'"),
        ("color LIKE 'a' ESCAPE 'ab'", 23, "the ESCAPE string must be exactly one character, not 'ab'"),
        ("color LIKE 'a' ESCAPE ''", 23, "the ESCAPE string must be exactly one character, not ''"),
        ("color LIKE 'a' ESCAPE", 22, "expected a one-character string literal after 'ESCAPE'"),
        ("color > 'a'", 9, "'>' compares numbers: a string literal cannot be compared with it"),
        ("'nine' <= size", 1, "'<=' compares numbers: a string literal cannot be compared with it"),
        ("size BETWEEN 'a' AND 'c'", 14, "BETWEEN compares numbers: a string literal cannot be compared with it"),
        ("size LIKE 'a%' OR 5 LIKE 'a'", 19, "LIKE needs a string on its left, not a number"),
        ("size BETWEEN 1 10", 16, "expected AND after '1', found '10'"),
        ("size BETWEEN 1 AND", 19, "expected a value after 'AND'"),
        ("size BETWEEN TRUE AND 2", 14, "BETWEEN compares values, not conditions"),
        ("color IN 'a'", 10, "expected '(' after 'IN', found 'a'"),
        ("color IN ()", 11, "expected a string literal after '(', found ')'"),
        ("color IN (1)", 11, "expected a string literal after '(', found '1'"),
        ("color IN ('a' 'b')", 15, "expected ',' or ')' after 'a', found 'b'"),
        ("color IN ('a',)", 15, "expected a string literal after ',', found ')'"),
        ("color IN ('a'", 14, "expected ',' or ')' after 'a'"),
        ("1 IN ('1')", 1, "IN needs a string on its left, not a number"),
        ("color IS 5", 10, "expected NULL or NOT NULL after 'IS', found '5'"),
        ("color IS NOT 5", 14, "expected NULL after 'NOT', found '5'"),
        ("color NOT 5", 11, "expected LIKE, BETWEEN or IN after 'NOT', found '5'"),
        ("NULL = 1", 1, "NULL is only allowed in IS NULL and IS NOT NULL"),
        ("1 + 2", 1, "the selector must be a condition (a comparison, LIKE, IN, BETWEEN, IS NULL or a boolean), not a number"),
        ("'abc'", 1, "the selector must be a condition (a comparison, LIKE, IN, BETWEEN, IS NULL or a boolean), not a string"),
        ("'a' AND TRUE", 1, "AND needs a condition, not a string"),
        ("TRUE OR 1", 9, "OR needs a condition, not a number"),
        ("NOT 5", 5, "NOT needs a condition, not a number"),
        ("color = 'a' + 1", 9, "'+' needs numbers, not a string"),
        ("-'a' = 1", 2, "'-' needs numbers, not a string"),
        ("TRUE * 2 = 2", 1, "'*' needs numbers, not a condition"),
        ("TRUE < 1", 1, "'<' compares values, not conditions"),
        ("1 < 2 < 3", 1, "'<' compares values, not conditions"),
        ("TRUE = 1", 1, "a condition cannot be compared with a number"),
        ("'x' <> (1 = 1)", 1, "a condition cannot be compared with a string"),
    ];

    #[test]
    fn parse_errors() {
        let mut failures = Vec::new();
        for (text, column, message) in ERRORS {
            let expected = SelectorError {
                column: *column,
                message: message.to_string(),
            };
            match Selector::parse(text) {
                Ok(_) => failures.push(format!("{text:?}: parsed")),
                Err(e) if e != expected => failures.push(format!("{text:?}: got {e}")),
                Err(_) => {}
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn error_display() {
        let e = Selector::parse("color = ").unwrap_err();
        assert_eq!(
            e.to_string(),
            "selector error at column 9: expected a value after '='"
        );
    }

    fn deep_error(text: &str) {
        let e = Selector::parse(text).unwrap_err();
        assert!(
            e.message.contains("nests deeper than 100 levels"),
            "{}: {e}",
            &text[..text.len().min(40)]
        );
    }

    #[test]
    fn nesting_is_limited() {
        let ok = format!("{}TRUE{}", "(".repeat(100), ")".repeat(100));
        assert!(Selector::parse(&ok).unwrap().matches(&message()));
        deep_error(&format!("{}TRUE{}", "(".repeat(101), ")".repeat(101)));
        let ok = format!("{}TRUE", "NOT ".repeat(100));
        assert!(Selector::parse(&ok).unwrap().matches(&message()));
        deep_error(&format!("{}TRUE", "NOT ".repeat(101)));
        deep_error(&format!("{}1 = 1", "- ".repeat(101)));
        deep_error(&format!("{}1 = 1", "+ ".repeat(101)));
        // Hostile sizes fail fast instead of overflowing the stack.
        for hostile in [
            "(".repeat(1_000_000),
            "NOT ".repeat(200_000),
            "- ".repeat(200_000),
            format!("{}1 = 1", "size + ".repeat(200_000)),
            format!("size{}", " = size".repeat(200_000)),
            format!("TRUE{}", " = TRUE".repeat(200_000)),
            format!("{}TRUE", "(NOT ".repeat(100_000)),
        ] {
            deep_error(&hostile);
        }
        // A chain of arithmetic counts its length.
        let ok = format!("{}1 = 100", "1 + ".repeat(99));
        assert!(Selector::parse(&ok).unwrap().matches(&message()));
        deep_error(&format!("{}1 = 101", "1 + ".repeat(100)));
    }

    #[test]
    fn worst_cases_fit_in_a_small_stack() {
        // Measured: under 192 KiB in a debug build, under 64 KiB in release.
        let worst = std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(|| {
                let m = message();
                for text in [
                    format!("{}TRUE{}", "(".repeat(100), ")".repeat(100)),
                    format!("{}size = 10{}", "(NOT ".repeat(50), ")".repeat(50)),
                    format!("{}TRUE", "NOT ".repeat(100)),
                    format!("{}size = 10", "- - ".repeat(49)),
                    format!("{}1 = 100", "1 + ".repeat(99)),
                    format!("{}TRUE{}", "(TRUE AND ".repeat(99), ")".repeat(99)),
                ] {
                    let selector = Selector::parse(&text).unwrap();
                    assert!(selector.matches(&m), "{}", &text[..40]);
                }
                for text in [
                    "(".repeat(1_000_000),
                    format!("{}TRUE", "(TRUE OR ".repeat(100_000)),
                ] {
                    assert!(Selector::parse(&text).is_err());
                }
            })
            .unwrap()
            .join();
        assert!(worst.is_ok());
    }

    #[test]
    fn long_chains_of_and_or_are_flat() {
        let ors: Vec<String> = (0..20_000).map(|i| format!("size = {i}")).collect();
        let s = Selector::parse(&ors.join(" OR ")).unwrap();
        assert!(s.matches(&message()));
        let ands: Vec<String> = (0..20_000).map(|_| "size = 10".to_string()).collect();
        let s = Selector::parse(&ands.join(" AND ")).unwrap();
        assert!(s.matches(&message()));
        let items: Vec<String> = (0..20_000).map(|i| format!("'c{i}'")).collect();
        let s = Selector::parse(&format!("color NOT IN ({})", items.join(","))).unwrap();
        assert!(s.matches(&message()));
    }

    /// `--` without a line terminator after it is two minus signs, however many there are:
    /// telling takes one look for the last terminator, not a scan of the rest per `--`
    /// (which took 120,000 scans of ~200,000 characters each here, under the core's lock).
    #[test]
    fn many_double_minus_signs_parse_in_one_pass() {
        let term = format!("size{} = 50", "--1".repeat(40));
        let terms: Vec<&str> = (0..3_000).map(|_| term.as_str()).collect();
        let s = Selector::parse(&terms.join(" OR ")).unwrap();
        assert!(s.matches(&message()));
        // With a line end after them, the first `--` starts a comment.
        let s = Selector::parse(&format!("size = 10 -- {}\n", terms.join(" OR "))).unwrap();
        assert!(s.matches(&message()));
    }

    #[test]
    fn like_does_not_blow_up() {
        let mut m = message();
        m.headers.push(Header::text("long", "a".repeat(10_000)));
        let s = Selector::parse(&format!("long LIKE '{}b'", "%a".repeat(50))).unwrap();
        assert!(!s.matches(&m));
        let s = Selector::parse(&format!("long LIKE '{}'", "%a".repeat(50))).unwrap();
        assert!(s.matches(&m));
    }

    fn selectorish() -> impl Strategy<Value = String> {
        let pieces = prop::sample::select(vec![
            "color",
            "size",
            "weight",
            "flag",
            "missing",
            "JMSPriority",
            "JMSDeliveryMode",
            "JMSRedelivered",
            "JMSType",
            "'red'",
            "'10'",
            "''",
            "'%'",
            "'a_b'",
            "10",
            "2.5",
            "0x1F",
            "017",
            "1e3",
            "TRUE",
            "FALSE",
            "NULL",
            "=",
            "<>",
            "<",
            ">",
            "<=",
            ">=",
            "+",
            "-",
            "*",
            "/",
            "(",
            ")",
            ",",
            "AND",
            "OR",
            "NOT",
            "BETWEEN",
            "IN",
            "LIKE",
            "ESCAPE",
            "IS",
            "--",
            "/*",
            "*/",
            "'",
            "!",
            " ",
        ]);
        prop::collection::vec(pieces, 0..40).prop_map(|p| p.join(" "))
    }

    proptest! {
        #[test]
        fn random_text_never_panics(text in "\\PC{0,80}") {
            if let Ok(s) = Selector::parse(&text) {
                let _ = s.matches(&message());
                let _ = s.matches(&Message::default());
            }
        }

        #[test]
        fn random_selectors_never_panic(text in selectorish(), value in "\\PC{0,8}") {
            match Selector::parse(&text) {
                Ok(s) => {
                    let mut m = message();
                    for h in &mut m.headers {
                        h.value = value.clone();
                    }
                    let _ = s.matches(&m);
                    let _ = s.matches(&message());
                }
                Err(e) => {
                    prop_assert!(e.column >= 1 && e.column <= text.chars().count() + 1);
                    prop_assert!(!e.message.is_empty());
                }
            }
        }

        #[test]
        fn like_agrees_with_a_reference(
            text in "[ab%_]{0,8}",
            pattern in "[ab%_]{0,6}",
        ) {
            // Reference: exhaustive recursion on chars.
            fn reference(p: &[char], t: &[char]) -> bool {
                match p.split_first() {
                    None => t.is_empty(),
                    Some(('%', rest)) => (0..=t.len()).any(|i| reference(rest, &t[i..])),
                    Some(('_', rest)) => !t.is_empty() && reference(rest, &t[1..]),
                    Some((c, rest)) => t.first() == Some(c) && reference(rest, &t[1..]),
                }
            }
            let p: Vec<char> = pattern.chars().collect();
            let t: Vec<char> = text.chars().collect();
            let compiled = Pattern::compile(&pattern, None);
            prop_assert_eq!(compiled.matches(&text), reference(&p, &t));
        }

        /// Patterns past 64 positions, whose states span several words (past 255, on the heap).
        #[test]
        fn long_likes_agree_with_a_reference(
            text in "[abé]{0,200}",
            pattern in "[ab%_é]{60,320}",
        ) {
            // Reference: dynamic programming over (pattern prefix, text prefix).
            let p: Vec<char> = pattern.chars().collect();
            let t: Vec<char> = text.chars().collect();
            let mut row = vec![false; t.len() + 1];
            row[0] = true;
            for &pc in &p {
                let mut next = vec![false; t.len() + 1];
                for j in 0..=t.len() {
                    next[j] = match pc {
                        '%' => row[j] || (j > 0 && next[j - 1]),
                        '_' => j > 0 && row[j - 1],
                        c => j > 0 && row[j - 1] && t[j - 1] == c,
                    };
                }
                row = next;
            }
            let compiled = Pattern::compile(&pattern, None);
            prop_assert_eq!(compiled.matches(&text), row[t.len()]);
        }
    }
}
