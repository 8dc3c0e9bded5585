//! One public error type. Every layer reports through it, with a kind that callers
//! (Rust or JS) can branch on and, where known, the node that failed.

use std::fmt;

/// What went wrong, coarse enough to branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The bytes are not a well-formed ONNX protobuf.
    Decode,
    /// The protobuf decodes but the model breaks ONNX rules (dangling names, cycles…).
    InvalidModel,
    /// Operators (or operator versions) this runtime does not implement.
    UnsupportedOp,
    /// A data type this runtime does not handle in that place.
    UnsupportedDType,
    /// The model keeps tensors in external files.
    ExternalData,
    /// An attribute is missing, of the wrong type, or has a value we do not support.
    InvalidAttribute,
    /// Shapes that do not fit the operator.
    Shape,
    /// A data type that does not fit the operator or the declared input.
    DType,
    /// The caller's inputs do not match the model (names, count, rank, dims).
    InvalidInput,
    /// A tensor would exceed the memory budget.
    MemoryLimit,
    /// A failure while computing (bad index values, …).
    Runtime,
    /// Reading or writing files (CLI and tests only).
    Io,
    /// The GPU failed during a run (device lost, out of GPU memory, a kernel the driver
    /// refused). The model falls back to the CPU for the next run.
    Device,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Decode => "Decode",
            ErrorKind::InvalidModel => "InvalidModel",
            ErrorKind::UnsupportedOp => "UnsupportedOp",
            ErrorKind::UnsupportedDType => "UnsupportedDType",
            ErrorKind::ExternalData => "ExternalData",
            ErrorKind::InvalidAttribute => "InvalidAttribute",
            ErrorKind::Shape => "Shape",
            ErrorKind::DType => "DType",
            ErrorKind::InvalidInput => "InvalidInput",
            ErrorKind::MemoryLimit => "MemoryLimit",
            ErrorKind::Runtime => "Runtime",
            ErrorKind::Io => "Io",
            ErrorKind::Device => "Device",
        }
    }
}

/// The crate's error: a kind, a message, and the node (name and op type) when known.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    node: Option<String>,
    op: Option<String>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            node: None,
            op: None,
        }
    }
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    /// Name of the node that failed, when the error came from one.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }
    /// Op type of the node that failed.
    pub fn op(&self) -> Option<&str> {
        self.op.as_deref()
    }
    /// Attach node context unless a deeper layer already did.
    pub fn at_node(mut self, name: &str, op: &str) -> Self {
        if self.node.is_none() && self.op.is_none() {
            self.node = Some(name.to_string());
            self.op = Some(op.to_string());
        }
        self
    }
    pub fn decode(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Decode, m)
    }
    pub fn invalid_model(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidModel, m)
    }
    pub fn unsupported_op(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::UnsupportedOp, m)
    }
    pub fn unsupported_dtype(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::UnsupportedDType, m)
    }
    pub fn attr(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidAttribute, m)
    }
    pub fn shape(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Shape, m)
    }
    pub fn dtype(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::DType, m)
    }
    pub fn input(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, m)
    }
    pub fn memory(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::MemoryLimit, m)
    }
    pub fn runtime(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Runtime, m)
    }
    pub fn device(m: impl Into<String>) -> Self {
        Error::new(ErrorKind::Device, m)
    }
    pub fn io(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Io, m)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)?;
        match (&self.node, &self.op) {
            (Some(n), Some(o)) if n.is_empty() => write!(f, " (at {o} node)"),
            (Some(n), Some(o)) => write!(f, " (at {o} node '{n}')"),
            _ => Ok(()),
        }
    }
}

impl std::error::Error for Error {}

/// `bail!(shape, "…{}", x)` returns `Err(Error::shape(format!(…)))`.
#[macro_export]
macro_rules! bail {
    ($ctor:ident, $($arg:tt)*) => {
        return Err($crate::error::Error::$ctor(format!($($arg)*)))
    };
}

/// `ensure!(cond, shape, "…")` bails when `cond` is false.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $ctor:ident, $($arg:tt)*) => {
        if !$cond {
            $crate::bail!($ctor, $($arg)*);
        }
    };
}
