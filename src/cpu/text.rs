//! CPU kernels for the text family (ops in `crate::graph::ops::text`): string ops, a small
//! regex matcher, TfIdfVectorizer, Det and the training optimizers.

use crate::cpu::elementwise::binary;
use crate::error::{Error, Result};
use crate::graph::Args;
use crate::tensor::{numel, DType, Tensor};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};

// ---------------------------------------------------------------------------------------
// StringNormalizer
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseChange {
    None,
    Lower,
    Upper,
}

/// Parsed StringNormalizer attributes.
#[derive(Debug, Clone)]
pub struct NormalizerOpts {
    pub case: CaseChange,
    pub case_sensitive: bool,
    /// Stopwords as written (case-sensitive) or lowercased (case-insensitive).
    stops: HashSet<String>,
}

impl NormalizerOpts {
    pub fn new(case: CaseChange, case_sensitive: bool, stopwords: Vec<String>) -> Self {
        let stops = if case_sensitive {
            stopwords.into_iter().collect()
        } else {
            stopwords.iter().map(|s| s.to_lowercase()).collect()
        };
        NormalizerOpts {
            case,
            case_sensitive,
            stops,
        }
    }
    fn is_stop(&self, s: &str) -> bool {
        if self.stops.is_empty() {
            false
        } else if self.case_sensitive {
            self.stops.contains(s)
        } else {
            self.stops.contains(&s.to_lowercase())
        }
    }
}

/// Removes stopwords (whole elements, as onnxruntime does) and changes case. Input [C] or
/// [1, C]; output [C'] or [1, C'], with a single "" when everything was removed.
pub fn string_normalizer(x: &Tensor, o: &NormalizerOpts) -> Result<Tensor> {
    let v = x.as_slice::<String>()?;
    let two_d = match x.shape() {
        [_] => false,
        [1, _] => true,
        s => {
            return Err(Error::shape(format!(
                "StringNormalizer: input must be [C] or [1, C], got {s:?}"
            )))
        }
    };
    let mut out: Vec<String> = Vec::with_capacity(v.len());
    for s in v {
        if o.is_stop(s) {
            continue;
        }
        out.push(match o.case {
            CaseChange::None => s.clone(),
            CaseChange::Lower => s.to_lowercase(),
            CaseChange::Upper => s.to_uppercase(),
        });
    }
    if out.is_empty() {
        out.push(String::new());
    }
    let n = out.len();
    let shape = if two_d { vec![1, n] } else { vec![n] };
    Tensor::from_vec(shape, out)
}

// ---------------------------------------------------------------------------------------
// StringConcat / StringSplit
// ---------------------------------------------------------------------------------------

/// Elementwise `a + b` on strings, with numpy broadcasting.
pub fn string_concat(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary::<String, String, String>(a, b, |x, y| {
        let mut s = String::with_capacity(x.len() + y.len());
        s.push_str(x);
        s.push_str(y);
        s
    })
}

/// Python `str.split(sep, maxsplit)` of one string.
fn split_one<'a>(s: &'a str, delim: Option<&str>, maxsplit: Option<usize>) -> Vec<&'a str> {
    match delim {
        Some(d) => match maxsplit {
            Some(m) => s.splitn(m.saturating_add(1), d).collect(),
            None => s.split(d).collect(),
        },
        None => {
            // Runs of whitespace; leading/trailing whitespace ignored; after `maxsplit`
            // splits the rest (leading whitespace stripped) is one piece.
            let mut parts = Vec::new();
            let mut rest = s.trim_start();
            while !rest.is_empty() {
                if maxsplit.is_some_and(|m| parts.len() >= m) {
                    parts.push(rest);
                    break;
                }
                match rest.find(char::is_whitespace) {
                    Some(p) => {
                        parts.push(&rest[..p]);
                        rest = rest[p..].trim_start();
                    }
                    None => {
                        parts.push(rest);
                        break;
                    }
                }
            }
            parts
        }
    }
}

/// Splits every element; returns the padded substrings [..., max_count] and the counts.
pub fn string_split(
    x: &Tensor,
    delim: Option<&str>,
    maxsplit: Option<usize>,
) -> Result<(Tensor, Tensor)> {
    let v = x.as_slice::<String>()?;
    let splits: Vec<Vec<&str>> = v.iter().map(|s| split_one(s, delim, maxsplit)).collect();
    let width = splits.iter().map(Vec::len).max().unwrap_or(0);
    let mut shape = x.shape().to_vec();
    shape.push(width);
    let n = numel(&shape, DType::Str)?;
    let mut out: Vec<String> = Vec::with_capacity(n);
    let mut counts: Vec<i64> = Vec::with_capacity(v.len());
    for parts in &splits {
        counts.push(i64::try_from(parts.len()).unwrap_or(i64::MAX));
        out.extend(parts.iter().map(|p| (*p).to_string()));
        out.extend(std::iter::repeat_n(String::new(), width - parts.len()));
    }
    Ok((
        Tensor::from_vec(shape, out)?,
        Tensor::from_vec(x.shape().to_vec(), counts)?,
    ))
}

// ---------------------------------------------------------------------------------------
// RegexFullMatch: a small backtracking matcher for an RE2 subset
// ---------------------------------------------------------------------------------------

/// Longest string the recursive matcher accepts (bounds its stack use).
const REGEX_MAX_CHARS: usize = 1000;
/// Matching steps per string before giving up (bounds catastrophic backtracking).
const REGEX_MAX_STEPS: usize = 2_000_000;

#[derive(Debug, Clone)]
enum ClassItem {
    Range(char, char),
    /// A Perl class: 'w', 'd', 's' (negated forms upper case).
    Perl(char),
}

#[derive(Debug, Clone)]
enum Node {
    Char(char),
    /// `.`: anything but a newline.
    Any,
    Class {
        items: Vec<ClassItem>,
        negated: bool,
    },
    Start,
    End,
    WordBoundary(bool),
    Group(Vec<Vec<Node>>),
    Repeat {
        node: Box<Node>,
        min: usize,
        max: Option<usize>,
        greedy: bool,
    },
}

/// A compiled pattern for [`regex_full_match`].
#[derive(Debug, Clone)]
pub struct Regex {
    alts: Vec<Vec<Node>>,
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn perl_class(k: char, c: char) -> bool {
    match k {
        'w' => is_word(c),
        'W' => !is_word(c),
        'd' => c.is_ascii_digit(),
        'D' => !c.is_ascii_digit(),
        's' => matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c'),
        'S' => !matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c'),
        _ => false,
    }
}

struct Parser<'a> {
    p: &'a [char],
    i: usize,
    depth: usize,
}

fn rx_err(msg: impl std::fmt::Display) -> Error {
    Error::unsupported_op(format!("RegexFullMatch: {msg}"))
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.p.get(self.i).copied()
    }
    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.i += 1;
        }
        c
    }
    fn alts(&mut self) -> Result<Vec<Vec<Node>>> {
        self.depth += 1;
        if self.depth > 100 {
            return Err(rx_err("pattern nests too deeply"));
        }
        let mut alts = vec![self.seq()?];
        while self.peek() == Some('|') {
            self.i += 1;
            alts.push(self.seq()?);
        }
        self.depth -= 1;
        Ok(alts)
    }
    fn seq(&mut self) -> Result<Vec<Node>> {
        let mut seq = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let atom = self.atom()?;
            let atom = self.quantifier(atom)?;
            seq.push(atom);
        }
        Ok(seq)
    }
    fn number(&mut self) -> Option<usize> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        if self.i == start {
            return None;
        }
        self.p[start..self.i]
            .iter()
            .collect::<String>()
            .parse()
            .ok()
    }
    fn quantifier(&mut self, mut atom: Node) -> Result<Node> {
        loop {
            let save = self.i;
            let (min, max) = match self.peek() {
                Some('*') => {
                    self.i += 1;
                    (0, None)
                }
                Some('+') => {
                    self.i += 1;
                    (1, None)
                }
                Some('?') => {
                    self.i += 1;
                    (0, Some(1))
                }
                Some('{') => {
                    self.i += 1;
                    let Some(min) = self.number() else {
                        // RE2 treats a `{` that starts no repetition as a literal.
                        self.i = save;
                        return Ok(atom);
                    };
                    let max = if self.peek() == Some(',') {
                        self.i += 1;
                        self.number()
                    } else {
                        Some(min)
                    };
                    if self.next() != Some('}') {
                        self.i = save;
                        return Ok(atom);
                    }
                    if min > 1000 || max.is_some_and(|m| m > 1000 || m < min) {
                        return Err(rx_err("bad repetition count"));
                    }
                    (min, max)
                }
                _ => return Ok(atom),
            };
            if matches!(atom, Node::Start | Node::End | Node::WordBoundary(_)) {
                return Err(rx_err("repetition of an empty-width assertion"));
            }
            let greedy = if self.peek() == Some('?') {
                self.i += 1;
                false
            } else {
                true
            };
            atom = Node::Repeat {
                node: Box::new(atom),
                min,
                max,
                greedy,
            };
            if matches!(self.peek(), Some('*' | '+' | '?')) {
                return Err(rx_err("bad repetition operator"));
            }
        }
    }
    fn escape(&mut self) -> Result<Node> {
        let c = self.next().ok_or_else(|| rx_err("trailing backslash"))?;
        Ok(match c {
            'w' | 'W' | 'd' | 'D' | 's' | 'S' => Node::Class {
                items: vec![ClassItem::Perl(c)],
                negated: false,
            },
            'b' => Node::WordBoundary(true),
            'B' => Node::WordBoundary(false),
            'A' => Node::Start,
            'z' => Node::End,
            _ => Node::Char(self.simple_escape(c)?),
        })
    }
    fn simple_escape(&self, c: char) -> Result<char> {
        Ok(match c {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'f' => '\x0c',
            'v' => '\x0b',
            c if c.is_ascii_punctuation() => c,
            c => return Err(rx_err(format!("unsupported escape \\{c}"))),
        })
    }
    fn class(&mut self) -> Result<Node> {
        let negated = if self.peek() == Some('^') {
            self.i += 1;
            true
        } else {
            false
        };
        let mut items = Vec::new();
        let mut first = true;
        loop {
            let c = self.next().ok_or_else(|| rx_err("missing ]"))?;
            if c == ']' && !first {
                break;
            }
            first = false;
            let lo = if c == '\\' {
                let e = self.next().ok_or_else(|| rx_err("missing ]"))?;
                if matches!(e, 'w' | 'W' | 'd' | 'D' | 's' | 'S') {
                    items.push(ClassItem::Perl(e));
                    continue;
                }
                self.simple_escape(e)?
            } else if c == '[' && self.peek() == Some(':') {
                return Err(rx_err("POSIX classes are not supported"));
            } else {
                c
            };
            // A range `lo-hi` (a '-' before ']' is literal).
            if self.peek() == Some('-') && self.p.get(self.i + 1).is_some_and(|&n| n != ']') {
                self.i += 1;
                let h = self.next().ok_or_else(|| rx_err("missing ]"))?;
                let hi = if h == '\\' {
                    let e = self.next().ok_or_else(|| rx_err("missing ]"))?;
                    self.simple_escape(e)?
                } else {
                    h
                };
                if hi < lo {
                    return Err(rx_err("bad character class range"));
                }
                items.push(ClassItem::Range(lo, hi));
            } else {
                items.push(ClassItem::Range(lo, lo));
            }
        }
        Ok(Node::Class { items, negated })
    }
    fn atom(&mut self) -> Result<Node> {
        let c = self.next().ok_or_else(|| rx_err("unexpected end"))?;
        Ok(match c {
            '.' => Node::Any,
            '^' => Node::Start,
            '$' => Node::End,
            '\\' => self.escape()?,
            '[' => self.class()?,
            '(' => {
                if self.peek() == Some('?') {
                    if self.p.get(self.i + 1) == Some(&':') {
                        self.i += 2;
                    } else {
                        return Err(rx_err("group flags and named groups are not supported"));
                    }
                }
                let alts = self.alts()?;
                if self.next() != Some(')') {
                    return Err(rx_err("missing )"));
                }
                Node::Group(alts)
            }
            '*' | '+' | '?' => return Err(rx_err("missing argument to repetition operator")),
            c => Node::Char(c),
        })
    }
}

struct Matcher<'a> {
    s: &'a [char],
    steps: Cell<usize>,
}

impl Matcher<'_> {
    fn step(&self) -> bool {
        let n = self.steps.get() + 1;
        self.steps.set(n);
        n <= REGEX_MAX_STEPS
    }
    fn word_at(&self, i: usize) -> bool {
        self.s.get(i).is_some_and(|&c| is_word(c))
    }
    fn single(&self, n: &Node, c: char) -> bool {
        match n {
            Node::Char(x) => *x == c,
            Node::Any => c != '\n',
            Node::Class { items, negated } => {
                let hit = items.iter().any(|it| match it {
                    ClassItem::Range(lo, hi) => (*lo..=*hi).contains(&c),
                    ClassItem::Perl(k) => perl_class(*k, c),
                });
                hit != *negated
            }
            _ => false,
        }
    }
    fn seq(&self, seq: &[Node], i: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
        match seq.split_first() {
            None => k(i),
            Some((n, rest)) => self.node(n, i, &mut |j| self.seq(rest, j, k)),
        }
    }
    fn node(&self, n: &Node, i: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
        if !self.step() {
            return false;
        }
        match n {
            Node::Start => i == 0 && k(i),
            Node::End => i == self.s.len() && k(i),
            Node::WordBoundary(want) => {
                let b = (i > 0 && self.word_at(i - 1)) != self.word_at(i);
                b == *want && k(i)
            }
            Node::Group(alts) => alts.iter().any(|seq| self.seq(seq, i, k)),
            Node::Repeat {
                node,
                min,
                max,
                greedy,
            } => self.repeat(node, *min, *max, *greedy, 0, i, k),
            _ => match self.s.get(i) {
                Some(&c) if self.single(n, c) => k(i + 1),
                _ => false,
            },
        }
    }
    #[allow(clippy::too_many_arguments)]
    fn repeat(
        &self,
        n: &Node,
        min: usize,
        max: Option<usize>,
        greedy: bool,
        count: usize,
        i: usize,
        k: &mut dyn FnMut(usize) -> bool,
    ) -> bool {
        let can_more = max.is_none_or(|m| count < m);
        let more = |k: &mut dyn FnMut(usize) -> bool| {
            can_more
                && self.node(n, i, &mut |j| {
                    // An empty iteration past the minimum cannot make progress.
                    if j == i && count >= min {
                        return false;
                    }
                    self.repeat(n, min, max, greedy, count + 1, j, k)
                })
        };
        if count < min {
            return more(k);
        }
        // Greedy tries one more iteration first; lazy tries the continuation first.
        let order = if greedy { [true, false] } else { [false, true] };
        order
            .into_iter()
            .any(|again| if again { more(&mut *k) } else { k(i) })
    }
}

impl Regex {
    pub fn new(pattern: &str) -> Result<Regex> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut p = Parser {
            p: &chars,
            i: 0,
            depth: 0,
        };
        let alts = p.alts()?;
        if p.i != chars.len() {
            return Err(rx_err("unmatched )"));
        }
        Ok(Regex { alts })
    }
    /// True if the whole string matches.
    pub fn full_match(&self, s: &str) -> Result<bool> {
        let chars: Vec<char> = s.chars().collect();
        if chars.len() > REGEX_MAX_CHARS {
            return Err(Error::runtime(format!(
                "RegexFullMatch: strings longer than {REGEX_MAX_CHARS} characters are not supported"
            )));
        }
        let m = Matcher {
            s: &chars,
            steps: Cell::new(0),
        };
        let end = chars.len();
        let hit = self.alts.iter().any(|seq| m.seq(seq, 0, &mut |j| j == end));
        if m.steps.get() > REGEX_MAX_STEPS {
            return Err(Error::runtime(
                "RegexFullMatch: pattern needs too much backtracking",
            ));
        }
        Ok(hit)
    }
}

/// Elementwise full match of a string tensor.
pub fn regex_full_match(x: &Tensor, re: &Regex) -> Result<Tensor> {
    let v = x.as_slice::<String>()?;
    let out = v
        .iter()
        .map(|s| re.full_match(s))
        .collect::<Result<Vec<bool>>>()?;
    Tensor::from_vec(x.shape().to_vec(), out)
}

// ---------------------------------------------------------------------------------------
// TfIdfVectorizer
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TfIdfMode {
    Tf,
    Idf,
    TfIdf,
}

/// The n-gram pool: ints (for int32/int64 inputs) or strings.
#[derive(Debug, Clone)]
pub enum Pool {
    Ints(Vec<i64>),
    Strings(Vec<String>),
}

/// TfIdfVectorizer attributes as written.
pub struct TfIdfSpec {
    pub max_gram: i64,
    pub min_gram: i64,
    pub max_skip: i64,
    pub mode: TfIdfMode,
    pub ngram_counts: Vec<i64>,
    pub ngram_indexes: Vec<i64>,
    pub pool: Pool,
    pub weights: Option<Vec<f32>>,
}

/// A prepared TfIdfVectorizer: every n-gram and n-gram prefix of the pool, keyed by
/// token ids (strings are mapped to ids), to the n-gram's output column.
#[derive(Debug)]
pub struct TfIdf {
    min_gram: usize,
    max_gram: usize,
    max_skip: usize,
    mode: TfIdfMode,
    pool: Pool,
    /// String token ids (string pools only).
    string_ids: HashMap<String, i64>,
    /// n-gram (or prefix) -> output column (None for a prefix only).
    grams: HashMap<Vec<i64>, Option<usize>>,
    output_size: usize,
    weights: Option<Vec<f32>>,
}

impl TfIdf {
    pub fn new(s: TfIdfSpec) -> Result<TfIdf> {
        let bad = |m: &str| Error::attr(format!("TfIdfVectorizer: {m}"));
        let min_gram = usize::try_from(s.min_gram).map_err(|_| bad("bad min_gram_length"))?;
        let max_gram = usize::try_from(s.max_gram).map_err(|_| bad("bad max_gram_length"))?;
        let max_skip = usize::try_from(s.max_skip).map_err(|_| bad("bad max_skip_count"))?;
        if min_gram == 0 || max_gram < min_gram {
            return Err(bad("need 1 <= min_gram_length <= max_gram_length"));
        }
        let mut string_ids = HashMap::new();
        let tokens: Vec<i64> = match &s.pool {
            Pool::Ints(p) => p.clone(),
            Pool::Strings(p) => p
                .iter()
                .map(|w| {
                    let next = i64::try_from(string_ids.len()).unwrap_or(i64::MAX);
                    *string_ids.entry(w.clone()).or_insert(next)
                })
                .collect(),
        };
        let columns = s
            .ngram_indexes
            .iter()
            .map(|&i| usize::try_from(i).map_err(|_| bad("negative ngram index")))
            .collect::<Result<Vec<usize>>>()?;
        let output_size = columns.iter().max().map_or(0, |m| m + 1);
        if let Some(w) = &s.weights {
            if w.len() < output_size {
                return Err(bad("fewer weights than output columns"));
            }
        }
        let mut grams: HashMap<Vec<i64>, Option<usize>> = HashMap::new();
        let mut gram_id = 0usize;
        for (k, &start) in s.ngram_counts.iter().enumerate() {
            let size = k + 1;
            let end = s
                .ngram_counts
                .get(k + 1)
                .copied()
                .unwrap_or_else(|| i64::try_from(tokens.len()).unwrap_or(i64::MAX));
            let (Ok(start), Ok(end)) = (usize::try_from(start), usize::try_from(end)) else {
                return Err(bad("negative ngram_counts"));
            };
            if start > end || end > tokens.len() {
                return Err(bad("ngram_counts out of the pool"));
            }
            let n = (end - start) / size;
            if size < min_gram || size > max_gram {
                gram_id += n;
                continue;
            }
            for g in 0..n {
                let off = start + g * size;
                let gram = &tokens[off..off + size];
                for p in 1..size {
                    grams.entry(gram[..p].to_vec()).or_insert(None);
                }
                let col = *columns
                    .get(gram_id)
                    .ok_or_else(|| bad("fewer ngram_indexes than n-grams"))?;
                grams.insert(gram.to_vec(), Some(col));
                gram_id += 1;
            }
        }
        Ok(TfIdf {
            min_gram,
            max_gram,
            max_skip,
            mode: s.mode,
            pool: s.pool,
            string_ids,
            grams,
            output_size,
            weights: s.weights,
        })
    }
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
    pub fn output_size(&self) -> usize {
        self.output_size
    }

    /// Counts the n-grams of one row into `freq` (one slot per output column).
    fn count_row(&self, row: &[Option<i64>], freq: &mut [u32]) {
        let c = row.len();
        let mut start_size = self.min_gram;
        let mut key: Vec<i64> = Vec::with_capacity(self.max_gram);
        for skip in 1..=self.max_skip.saturating_add(1) {
            if start_size > 1 && skip.saturating_mul(start_size - 1) >= c {
                break;
            }
            for start in 0..c {
                if start + skip * (start_size - 1) >= c {
                    break;
                }
                key.clear();
                let mut item = start;
                let mut size = 1;
                while size <= self.max_gram && item < c {
                    let Some(tok) = row[item] else { break };
                    key.push(tok);
                    match self.grams.get(&key) {
                        None => break,
                        Some(col) => {
                            if size >= start_size {
                                if let Some(slot) = col.and_then(|i| freq.get_mut(i)) {
                                    *slot = slot.saturating_add(1);
                                }
                            }
                        }
                    }
                    size += 1;
                    item += skip;
                }
            }
            if start_size == 1 {
                start_size = 2;
                if start_size > self.max_gram {
                    break;
                }
            }
        }
    }

    pub fn run(&self, x: &Tensor) -> Result<Tensor> {
        let tokens: Vec<Option<i64>> = match (&self.pool, x.dtype()) {
            (Pool::Ints(_), DType::I32 | DType::I64) => {
                x.to_i64_vec()?.into_iter().map(Some).collect()
            }
            (Pool::Strings(_), DType::Str) => x
                .as_slice::<String>()?
                .iter()
                .map(|s| self.string_ids.get(s).copied())
                .collect(),
            (_, dt) => {
                return Err(Error::dtype(format!(
                    "TfIdfVectorizer: input type {dt} does not match the pool"
                )))
            }
        };
        let (rows, cols, out_shape) = match x.shape() {
            [] => (1, 1, vec![self.output_size]),
            [c] => (1, *c, vec![self.output_size]),
            [b, c] => (*b, *c, vec![*b, self.output_size]),
            s => {
                return Err(Error::shape(format!(
                    "TfIdfVectorizer: input must be [C] or [B, C], got {s:?}"
                )))
            }
        };
        let n = numel(&out_shape, DType::F32)?;
        let mut freq = vec![0u32; n];
        if cols > 0 && self.output_size > 0 {
            for (row, f) in tokens
                .chunks_exact(cols)
                .zip(freq.chunks_exact_mut(self.output_size))
                .take(rows)
            {
                self.count_row(row, f);
            }
        }
        let w = self.weights.as_deref();
        let out: Vec<f32> = freq
            .iter()
            .enumerate()
            .map(|(p, &f)| {
                let wi = w.and_then(|w| w.get(p % self.output_size.max(1)).copied());
                match self.mode {
                    TfIdfMode::Tf => f as f32,
                    TfIdfMode::Idf => match (f > 0, wi) {
                        (false, _) => 0.0,
                        (true, Some(w)) => w,
                        (true, None) => 1.0,
                    },
                    TfIdfMode::TfIdf => wi.unwrap_or(1.0) * f as f32,
                }
            })
            .collect();
        Tensor::from_vec(out_shape, out)
    }
}

// ---------------------------------------------------------------------------------------
// Det
// ---------------------------------------------------------------------------------------

/// Determinant of one n×n row-major matrix by LU with partial pivoting (destroys `a`).
fn det_lu(a: &mut [f64], n: usize) -> f64 {
    let mut det = 1.0;
    for col in 0..n {
        let mut piv = col;
        let mut best = a[col * n + col].abs();
        for r in col + 1..n {
            let v = a[r * n + col].abs();
            if v > best {
                best = v;
                piv = r;
            }
        }
        if best == 0.0 || best.is_nan() {
            return if best.is_nan() { f64::NAN } else { 0.0 };
        }
        if piv != col {
            for j in 0..n {
                a.swap(col * n + j, piv * n + j);
            }
            det = -det;
        }
        let d = a[col * n + col];
        det *= d;
        for r in col + 1..n {
            let f = a[r * n + col] / d;
            if f != 0.0 {
                for j in col + 1..n {
                    a[r * n + j] -= f * a[col * n + j];
                }
            }
        }
    }
    det
}

/// Determinants of [..., M, M] float matrices; output [...].
pub fn det(x: &Tensor) -> Result<Tensor> {
    let dt = x.dtype();
    if !dt.is_float() {
        return Err(Error::unsupported_dtype(format!(
            "Det does not support {dt}"
        )));
    }
    let s = x.shape();
    if s.len() < 2 || s[s.len() - 1] != s[s.len() - 2] {
        return Err(Error::shape(format!(
            "Det: input must be [..., M, M], got {s:?}"
        )));
    }
    let m = s[s.len() - 1];
    let batch = s[..s.len() - 2].to_vec();
    let mut v = x.to_f64_vec()?;
    let mut out = Vec::with_capacity(v.len() / (m * m).max(1));
    if m == 0 {
        out.resize(numel(&batch, dt)?, 1.0);
    } else {
        for mat in v.chunks_exact_mut(m * m) {
            out.push(det_lu(mat, m));
        }
    }
    Tensor::from_vec(batch, out)?.cast(dt)
}

// ---------------------------------------------------------------------------------------
// Training optimizers
// ---------------------------------------------------------------------------------------

/// Runs an optimizer update elementwise. Inputs: R (scalar float), T (scalar int64), then
/// `groups` blocks of N same-shape float tensors (X, G, states...). `f(r, t, ins, outs)`
/// gets one element of each block and writes X_new and the new states. Outputs: the
/// `groups - 1` output blocks of N tensors, block by block.
pub fn optimizer(
    args: &Args,
    groups: usize,
    what: &str,
    f: impl Fn(f64, f64, &[f64], &mut [f64]),
) -> Result<Vec<Tensor>> {
    if !(2..=4).contains(&groups) {
        return Err(Error::runtime(format!("{what}: bad optimizer arity")));
    }
    let n_in = args.len();
    if n_in < 2 + groups || !(n_in - 2).is_multiple_of(groups) {
        return Err(Error::input(format!(
            "{what}: expected 2 + {groups}*N inputs, got {n_in}"
        )));
    }
    let r = args.t(0)?.scalar_f64()?;
    let t = args.t(1)?.scalar_i64()? as f64;
    let n = (n_in - 2) / groups;
    let mut outs: Vec<Vec<Tensor>> = (1..groups).map(|_| Vec::with_capacity(n)).collect();
    for i in 0..n {
        let ts = (0..groups)
            .map(|g| args.t(2 + g * n + i))
            .collect::<Result<Vec<&Tensor>>>()?;
        let x = ts[0];
        let dt = x.dtype();
        if !dt.is_float() {
            return Err(Error::unsupported_dtype(format!(
                "{what} does not support {dt}"
            )));
        }
        for t in &ts[1..] {
            if t.shape() != x.shape() || t.dtype() != dt {
                return Err(Error::shape(format!(
                    "{what}: tensors of one group must match, got {}{:?} and {}{:?}",
                    dt,
                    x.shape(),
                    t.dtype(),
                    t.shape()
                )));
            }
        }
        let vals = ts
            .iter()
            .map(|t| t.to_f64_vec())
            .collect::<Result<Vec<Vec<f64>>>>()?;
        let len = x.len();
        let mut res: Vec<Vec<f64>> = (1..groups).map(|_| Vec::with_capacity(len)).collect();
        let mut ins = [0f64; 4];
        let mut o = [0f64; 4];
        for e in 0..len {
            for (g, v) in vals.iter().enumerate() {
                ins[g] = v[e];
            }
            f(r, t, &ins[..groups], &mut o[..groups - 1]);
            for (g, r) in res.iter_mut().enumerate() {
                r.push(o[g]);
            }
        }
        for (g, r) in res.into_iter().enumerate() {
            outs[g].push(Tensor::from_vec(x.shape().to_vec(), r)?.cast(dt)?);
        }
    }
    Ok(outs.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[&str]) -> Tensor {
        Tensor::vector(v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn normalizer_and_split() {
        let o = NormalizerOpts::new(CaseChange::Upper, false, vec!["monday".into()]);
        let y = string_normalizer(&strs(&["Monday", "tue"]), &o).unwrap();
        assert_eq!(y.as_slice::<String>().unwrap(), &["TUE".to_string()]);
        let (s, c) = string_split(&strs(&[" a  b c ", ""]), None, Some(1)).unwrap();
        assert_eq!(s.shape(), &[2, 2]);
        assert_eq!(s.as_slice::<String>().unwrap(), &["a", "b c ", "", ""]);
        assert_eq!(c.as_slice::<i64>().unwrap(), &[2, 0]);
        // 3-D input is an error.
        let t = Tensor::from_vec(vec![1, 1, 1], vec![String::new()]).unwrap();
        assert!(string_normalizer(&t, &o).is_err());
    }

    #[test]
    fn regex() {
        let re = Regex::new(r"www\.[\w.-]+\.\bcom\b").unwrap();
        assert!(re.full_match("www.google.com").unwrap());
        assert!(!re.full_match("www.bbc.co.uk").unwrap());
        let re = Regex::new(r"(\W|^)[\w.\-]{0,25}@(yahoo|gmail)\.com(\W|$)").unwrap();
        assert!(re.full_match("account@gmail.com").unwrap());
        assert!(!re.full_match("account@hotmail.com").unwrap());
        let re = Regex::new("a*?b|c+").unwrap();
        assert!(re.full_match("aab").unwrap() && re.full_match("cc").unwrap());
        assert!(Regex::new("(a").is_err());
        assert!(Regex::new("(?P<x>a)").is_err());
        // Catastrophic backtracking is stopped with an error, not a hang.
        let re = Regex::new("(a*)*b").unwrap();
        assert!(re.full_match(&"a".repeat(40)).is_err());
    }

    #[test]
    fn det_values() {
        let x = Tensor::from_vec(vec![2, 2, 2], vec![0f32, 1., 2., 3., 1., 2., 2., 1.]).unwrap();
        let y = det(&x).unwrap();
        assert_eq!(y.shape(), &[2]);
        let v = y.as_slice::<f32>().unwrap();
        assert!((v[0] + 2.0).abs() < 1e-6 && (v[1] + 3.0).abs() < 1e-6);
        let bad = Tensor::from_vec(vec![2, 3], vec![0f32; 6]).unwrap();
        assert!(det(&bad).is_err());
    }

    #[test]
    fn tfidf_counts() {
        let m = TfIdf::new(TfIdfSpec {
            max_gram: 2,
            min_gram: 1,
            max_skip: 5,
            mode: TfIdfMode::Tf,
            ngram_counts: vec![0, 4],
            ngram_indexes: (0..7).collect(),
            pool: Pool::Ints(vec![2, 3, 5, 4, 5, 6, 7, 8, 6, 7]),
            weights: None,
        })
        .unwrap();
        let x = Tensor::vector(vec![1i32, 1, 3, 3, 3, 7, 8, 6, 7, 5, 6, 8]);
        let y = m.run(&x).unwrap();
        assert_eq!(y.as_slice::<f32>().unwrap(), &[0., 3., 1., 0., 1., 3., 1.]);
        let bad = TfIdf::new(TfIdfSpec {
            max_gram: 2,
            min_gram: 1,
            max_skip: 0,
            mode: TfIdfMode::Tf,
            ngram_counts: vec![0, 40],
            ngram_indexes: vec![0],
            pool: Pool::Ints(vec![1]),
            weights: None,
        });
        assert!(bad.is_err());
    }
}
