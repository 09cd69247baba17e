use std::path::PathBuf;

use eddy_shared::gst_elements::MissingElements;
use thiserror::Error;

use crate::fmp4::Fmp4Error;
use crate::ladder::LadderError;

#[derive(Debug, Error)]
pub enum PackageError {
    #[error("input {0} does not exist")]
    InputMissing(PathBuf),
    #[error("input {path} cannot be decoded: {reason}")]
    Undecodable { path: PathBuf, reason: String },
    #[error("input {0} has no video stream")]
    NoVideo(PathBuf),
    #[error("input {0} has no audio stream, so there is no audio for a separate audio rendition (package it with muxed audio)")]
    NoAudio(PathBuf),
    #[error("a separate audio rendition needs fMP4 output: MPEG-TS renditions carry their audio muxed")]
    SeparateAudioNeedsFmp4,
    #[error("low-latency HLS {0}")]
    LowLatency(String),
    #[error("audio language '{0}' is not a language tag such as en, pt-BR or und (RFC 5646)")]
    BadLanguage(String),
    #[error(transparent)]
    Ladder(#[from] LadderError),
    #[error("no ladder rung fits the {height}-line source (all taller: {skipped})")]
    NothingToMake { height: u32, skipped: String },
    #[error("cannot write to output folder {path}: {source}")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    MissingElements(#[from] MissingElements),
    #[error("GStreamer pipeline: {0}")]
    Pipeline(String),
    #[error("rendition {rung}: fragmented MP4: {source}")]
    Fmp4 {
        rung: String,
        #[source]
        source: Fmp4Error,
    },
    #[error("renditions disagree: {0}")]
    Misaligned(String),
}
