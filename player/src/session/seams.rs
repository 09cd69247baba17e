//! The two seams between the download loop and the world: where bytes come from ([`Fetch`]) and
//! where media goes ([`MediaSink`]). The real player plugs in [`Fetcher`] (HTTP and files) and
//! [`Pipeline`] (GStreamer); the tests plug in fakes, so the loop is tested without sockets, a
//! pipeline or waiting.

use std::future::Future;

use bytes::Bytes;
use url::Url;

use crate::fetch::{FetchError, Fetcher, Outcome, Progress};
use crate::pipeline::{Pipeline, PipelineError, PipelineEvent, Track};
use crate::playlist::Range;

/// Fetches playlists, keys and segments.
pub trait Fetch {
    /// The whole body of `url` (or its `range`).
    fn get(&self, url: &Url, range: Option<Range>) -> impl Future<Output = Result<Bytes, FetchError>>;
    /// A playlist, and the URL it came from after redirects (its relative URIs' base).
    fn get_playlist(&self, url: &Url) -> impl Future<Output = Result<(Bytes, Url), FetchError>> {
        async move { self.get(url, None).await.map(|body| (body, url.clone())) }
    }
    /// Downloads `url`, calling `abandon` with the progress; stops (without retrying) when it says so.
    fn download(
        &self,
        url: &Url,
        range: Option<Range>,
        abandon: impl FnMut(&Progress) -> bool,
    ) -> impl Future<Output = Result<Outcome, FetchError>>;
}

impl Fetch for Fetcher {
    async fn get(&self, url: &Url, range: Option<Range>) -> Result<Bytes, FetchError> {
        Fetcher::get(self, url, range).await
    }

    async fn get_playlist(&self, url: &Url) -> Result<(Bytes, Url), FetchError> {
        Fetcher::get_playlist(self, url).await
    }

    async fn download(
        &self,
        url: &Url,
        range: Option<Range>,
        abandon: impl FnMut(&Progress) -> bool,
    ) -> Result<Outcome, FetchError> {
        Fetcher::download(self, url, range, abandon).await
    }
}

/// Plays what is pushed into it.
pub trait MediaSink: Send {
    /// Appends media to `track`; `discontinuity` after a rendition switch or a discontinuity tag.
    fn push(&self, track: Track, data: Vec<u8>, discontinuity: bool) -> Result<(), PipelineError>;
    fn play(&self) -> Result<(), PipelineError>;
    fn pause(&self) -> Result<(), PipelineError>;
    /// `track` starts over on a fresh source, its media placed at running time `at_s`:
    /// at a discontinuity (the old source plays out), or at a seek (`seek_at_s`: it is dropped, and so
    /// is the new media that would run before `seek_at_s`).
    fn restart(&self, _track: Track, _at_s: f64, _seek_at_s: Option<f64>) -> Result<(), PipelineError> {
        Ok(())
    }
    /// Nothing more will be pushed to `track`.
    fn end_of_stream(&self, track: Track) -> Result<(), PipelineError>;
    /// Media played so far (the clock's running time), once playing.
    fn running_time_s(&self) -> Option<f64>;
    /// What happened since the last call.
    fn poll(&self) -> Vec<PipelineEvent>;
    /// Seconds of decoded audio played so far.
    fn audio_played_s(&self) -> f64 {
        0.0
    }
    /// Shows `text` over the video until the next call; `None` shows nothing.
    fn set_subtitle(&self, _text: Option<&str>) {}
    /// The window's title (the URL and the rendition playing).
    fn set_title(&self, _title: &str) {}
    fn stop(&self);
}

impl MediaSink for Pipeline {
    fn push(&self, track: Track, data: Vec<u8>, discontinuity: bool) -> Result<(), PipelineError> {
        Pipeline::push(self, track, data, discontinuity)
    }
    fn play(&self) -> Result<(), PipelineError> {
        Pipeline::play(self)
    }
    fn pause(&self) -> Result<(), PipelineError> {
        Pipeline::pause(self)
    }
    fn restart(&self, track: Track, at_s: f64, seek_at_s: Option<f64>) -> Result<(), PipelineError> {
        Pipeline::restart(self, track, at_s, seek_at_s)
    }
    fn end_of_stream(&self, track: Track) -> Result<(), PipelineError> {
        Pipeline::end_of_stream(self, track)
    }
    fn running_time_s(&self) -> Option<f64> {
        Pipeline::running_time_s(self)
    }
    fn poll(&self) -> Vec<PipelineEvent> {
        Pipeline::poll(self)
    }
    fn audio_played_s(&self) -> f64 {
        Pipeline::audio_played_s(self)
    }
    fn set_title(&self, title: &str) {
        Pipeline::set_title(self, title)
    }
    fn set_subtitle(&self, text: Option<&str>) {
        Pipeline::set_subtitle(self, text)
    }
    fn stop(&self) {
        Pipeline::stop(self)
    }
}
