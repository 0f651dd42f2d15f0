//! Errors that point at a Dockerfile line.

use std::fmt;

use crate::parser::Instruction;

/// What went wrong.
#[derive(Debug, Clone, PartialEq)]
pub enum ErrorKind {
    UnknownInstruction {
        word: String,
        suggestion: Option<String>,
    },
    UnknownFlag {
        flag: String,
        instruction: String,
    },
    Unsupported(String),
    Expansion(String),
    Invalid(String),
    /// The base image could not be found or read.
    BaseImage(String),
    UnknownTarget {
        target: String,
        stages: Vec<String>,
    },
    NoStage,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::UnknownInstruction {
                word,
                suggestion: Some(s),
            } => {
                write!(f, "unknown instruction: {word} (did you mean {s}?)")
            }
            ErrorKind::UnknownInstruction {
                word,
                suggestion: None,
            } => write!(f, "unknown instruction: {word}"),
            ErrorKind::UnknownFlag { flag, instruction } => {
                write!(f, "unknown flag: --{flag} for {instruction}")
            }
            ErrorKind::Unsupported(what) => {
                write!(f, "{what} is not supported by this version of rbuild yet")
            }
            ErrorKind::Expansion(msg) | ErrorKind::Invalid(msg) | ErrorKind::BaseImage(msg) => {
                f.write_str(msg)
            }
            ErrorKind::UnknownTarget { target, stages } => {
                write!(
                    f,
                    "target stage {target:?} could not be found (stages: {})",
                    stages.join(", ")
                )
            }
            ErrorKind::NoStage => {
                f.write_str("the Dockerfile has no FROM: a build needs at least one stage")
            }
        }
    }
}

/// An error with the Dockerfile line it is about.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct CompileError {
    pub kind: ErrorKind,
    /// 1-based first line of the instruction, when the error is about one.
    pub line: Option<usize>,
    /// The instruction as written, for context.
    pub text: Option<String>,
}

impl CompileError {
    pub fn at(inst: &Instruction, kind: ErrorKind) -> CompileError {
        CompileError {
            kind,
            line: Some(inst.start_line),
            text: Some(inst.original.clone()),
        }
    }

    pub fn general(kind: ErrorKind) -> CompileError {
        CompileError {
            kind,
            line: None,
            text: None,
        }
    }

    /// The text in the instruction the error is about, for pointing at it.
    pub fn needle(&self) -> Option<String> {
        match &self.kind {
            ErrorKind::UnknownInstruction { word, .. } => Some(word.clone()),
            ErrorKind::UnknownFlag { flag, .. } => Some(format!("--{flag}")),
            _ => None,
        }
    }

    /// Formats as `FILE:LINE: message`.
    pub fn render(&self, file: &str) -> String {
        match self.line {
            Some(line) => format!("{file}:{line}: {}", self.kind),
            None => format!("{file}: {}", self.kind),
        }
    }
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}
