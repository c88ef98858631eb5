//! Turning engine events into what a person sees: indicatif bars on a terminal, plain
//! lines otherwise (CI logs), nothing under `--quiet`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use cudaimg_mirrors::sources::chain;
use cudaimg_oci::digest::Digest;
use cudaimg_oci::platform::Platform;
use cudaimg_oci::progress::{Reporter, Silent};

use super::human_bytes;

#[derive(Debug, Clone, Copy)]
pub enum Mode {
    Bars,
    Lines { verbose: bool },
    Quiet,
}

impl Mode {
    /// Bars only on a terminal and without `-v`; `-v` wants every step as a line.
    pub fn choose(quiet: bool, verbose: u8, stderr_is_tty: bool) -> Self {
        match (quiet, verbose, stderr_is_tty) {
            (true, _, _) => Mode::Quiet,
            (false, 0, true) => Mode::Bars,
            (false, v, _) => Mode::Lines { verbose: v > 0 },
        }
    }

    /// The display of this mode, its events counted into `tally` on the way.
    pub fn reporter(self, tally: Arc<Tally>) -> Box<dyn Reporter> {
        let shown: Box<dyn Reporter> = match self {
            Mode::Bars => Box::new(Bars::new()),
            Mode::Lines { verbose } => Box::new(Lines { verbose }),
            Mode::Quiet => Box::new(Silent),
        };
        Box::new(Counted { shown, tally })
    }

    /// A byte counter for long local work (verify); drawn only as a bar.
    pub fn counter(self, label: &str) -> ProgressBar {
        match self {
            Mode::Bars => {
                let bar = ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("{spinner} {msg} {bytes} ({bytes_per_sec})")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_message(label.to_owned());
                bar.enable_steady_tick(Duration::from_millis(120));
                bar
            }
            _ => ProgressBar::hidden(),
        }
    }
}

/// What the run's transfers kept so far, whatever is shown: for the one line Ctrl-C prints
/// ("3 of 9 blobs kept in STORE").
#[derive(Default)]
pub struct Tally {
    inner: Mutex<TallyInner>,
}

#[derive(Default)]
struct TallyInner {
    /// The image being pulled and how many blobs it has.
    pulling: Option<(String, usize)>,
    /// Its blobs in the store: there already, or verified and committed in this run.
    kept: HashSet<Digest>,
    /// Bytes of blobs begun and not finished: the partial downloads a next run resumes.
    partial: HashMap<Digest, u64>,
    /// A push: where to, and how many blobs.
    pushing: Option<(String, usize)>,
    pushed: HashSet<Digest>,
}

impl Tally {
    fn with(&self, f: impl FnOnce(&mut TallyInner)) {
        if let Ok(mut t) = self.inner.lock() {
            f(&mut t);
        }
    }

    /// The line for an interrupted run; `store`: where the store is, if it exists.
    pub fn interrupted(&self, store: Option<&str>) -> String {
        let Ok(t) = self.inner.lock() else {
            return "interrupted".into();
        };
        let again = "run the same command again to resume";
        if let Some((dest, blobs)) = &t.pushing {
            return format!(
                "interrupted: {} of {blobs} blobs are at {dest}; {again}",
                t.pushed.len()
            );
        }
        let Some((name, blobs)) = &t.pulling else {
            return "interrupted".into();
        };
        let partial: u64 = t.partial.values().sum();
        let partial = if partial > 0 {
            format!(" (and {} of partial downloads)", human_bytes(partial))
        } else {
            String::new()
        };
        format!(
            "interrupted: {} of {blobs} blobs of {name} kept in {}{partial}; {again}",
            t.kept.len(),
            store.unwrap_or("the store")
        )
    }
}

/// Passes every event on to what is shown, and counts it into the [`Tally`].
struct Counted {
    shown: Box<dyn Reporter>,
    tally: Arc<Tally>,
}

impl Reporter for Counted {
    fn resolved(
        &self,
        name: &str,
        digest: &Digest,
        platform: &Platform,
        total: u64,
        to_fetch: u64,
    ) {
        self.tally.with(|t| {
            t.pulling = Some((name.to_owned(), 0));
            t.kept.clear();
            t.partial.clear();
        });
        self.shown.resolved(name, digest, platform, total, to_fetch);
    }
    fn planned(&self, blobs: usize) {
        self.tally.with(|t| {
            if let Some((_, n)) = &mut t.pulling {
                *n = blobs;
            }
        });
        self.shown.planned(blobs);
    }
    fn blob_cached(&self, digest: &Digest, size: u64) {
        self.tally.with(|t| {
            t.kept.insert(digest.clone());
        });
        self.shown.blob_cached(digest, size);
    }
    fn blob_started(&self, digest: &Digest, size: u64, offset: u64, source: &str) {
        self.tally.with(|t| {
            t.partial.insert(digest.clone(), offset);
        });
        self.shown.blob_started(digest, size, offset, source);
    }
    fn blob_progress(&self, digest: &Digest, bytes: u64) {
        self.tally.with(|t| {
            *t.partial.entry(digest.clone()).or_default() += bytes;
        });
        self.shown.blob_progress(digest, bytes);
    }
    fn blob_finished(&self, digest: &Digest) {
        self.tally.with(|t| {
            t.partial.remove(digest);
            t.kept.insert(digest.clone());
        });
        self.shown.blob_finished(digest);
    }
    fn push_planned(&self, name: &str, destination: &str, blobs: usize, total: u64) {
        self.tally.with(|t| {
            t.pushing = Some((destination.to_owned(), blobs));
            t.pushed.clear();
        });
        self.shown.push_planned(name, destination, blobs, total);
    }
    fn upload_started(&self, digest: &Digest, size: u64) {
        self.shown.upload_started(digest, size);
    }
    fn upload_progress(&self, digest: &Digest, bytes: u64) {
        self.shown.upload_progress(digest, bytes);
    }
    fn upload_finished(&self, digest: &Digest, size: u64, how: &str) {
        self.tally.with(|t| {
            t.pushed.insert(digest.clone());
        });
        self.shown.upload_finished(digest, size, how);
    }
    fn manifest_pushed(&self, reference: &str, digest: &Digest) {
        self.shown.manifest_pushed(reference, digest);
    }
    fn notice(&self, line: &str) {
        self.shown.notice(line);
    }
    fn source_failed(&self, source: &str, what: &str, error: &(dyn std::error::Error + 'static)) {
        self.shown.source_failed(source, what, error);
    }
}

/// Plain lines on stderr, one per step.
struct Lines {
    verbose: bool,
}

impl Reporter for Lines {
    fn resolved(
        &self,
        name: &str,
        digest: &Digest,
        platform: &Platform,
        total: u64,
        to_fetch: u64,
    ) {
        note!(
            "resolved {name} ({platform}) to {digest}: {} to fetch of {}",
            human_bytes(to_fetch),
            human_bytes(total)
        );
    }
    fn blob_cached(&self, digest: &Digest, size: u64) {
        if self.verbose {
            note!("{} already stored ({})", digest.short(), human_bytes(size));
        }
    }
    fn blob_started(&self, digest: &Digest, size: u64, offset: u64, source: &str) {
        if offset > 0 {
            note!(
                "resuming {} at {} of {} from {source}",
                digest.short(),
                human_bytes(offset),
                human_bytes(size)
            );
        } else {
            note!(
                "fetching {} ({}) from {source}",
                digest.short(),
                human_bytes(size)
            );
        }
    }
    fn blob_finished(&self, digest: &Digest) {
        if self.verbose {
            note!("verified {}", digest.short());
        }
    }
    fn push_planned(&self, name: &str, destination: &str, blobs: usize, total: u64) {
        note!(
            "pushing {name} to {destination}: {}, {}",
            super::words::counted(blobs, "blob"),
            human_bytes(total)
        );
    }
    fn upload_finished(&self, digest: &Digest, size: u64, how: &str) {
        if self.verbose || how == "uploaded" {
            note!("{how} {} ({})", digest.short(), human_bytes(size));
        }
    }
    fn manifest_pushed(&self, reference: &str, digest: &Digest) {
        if self.verbose {
            note!("put manifest {} as {reference}", digest.short());
        }
    }
    fn notice(&self, line: &str) {
        note!("{line}");
    }
    fn source_failed(&self, source: &str, what: &str, error: &(dyn std::error::Error + 'static)) {
        // Without -v, the pull's closing warnings name each failed source once.
        if self.verbose {
            note!(
                "{source} failed for {what}: {}; trying the next source",
                chain(error)
            );
        }
    }
}

/// The label before every bar, in columns: the image's name and platform on the total's
/// bar, `  HEX12 host` on a blob's. One width for both, so every bar starts in one column.
const LABEL: usize = 24;
/// The whole image's bar. Every field after the bar has a fixed width, so every bar also
/// ends in one column; at 80 columns the bar keeps 6.
const TOTAL_TEMPLATE: &str = "{msg} [{wide_bar}] {bytes:>11}/{total_bytes:<11} {rate} eta {eta:>4}";
/// One blob's bar: its label, the same counts, and blanks where the total has its eta.
const BLOB_TEMPLATE: &str = "{msg} [{wide_bar}] {bytes:>11}/{total_bytes:<11} {rate}         ";
/// The rate's column: `1023.99 MiB/s`.
const RATE_WIDTH: usize = 13;
/// Rates are the bytes of the last few seconds: a resumed blob's earlier bytes, or one
/// fast burst, do not make a slow link look fast.
const RATE_WINDOW: Duration = Duration::from_secs(5);
/// A blob smaller than this is done in a blink: no rate is shown for it.
const MIN_RATED: u64 = 1 << 20;

/// When the first byte came, and the bytes of the last [`RATE_WINDOW`], each with its time.
type Samples = (Option<Instant>, std::collections::VecDeque<(Instant, u64)>);

/// Bytes transferred in this run, over a sliding window: what a bar's rate is made of.
#[derive(Default)]
struct Window {
    samples: Mutex<Samples>,
}

impl Window {
    fn add(&self, bytes: u64) {
        let now = Instant::now();
        if let Ok(mut s) = self.samples.lock() {
            s.0.get_or_insert(now);
            s.1.push_back((now, bytes));
            while s.1.front().is_some_and(|(t, _)| now - *t > RATE_WINDOW) {
                s.1.pop_front();
            }
        }
    }

    /// Bytes per second over the window; none before a second of transfer.
    fn rate(&self) -> Option<f64> {
        let now = Instant::now();
        let s = self.samples.lock().ok()?;
        let span = (now - s.0?).min(RATE_WINDOW);
        if span < Duration::from_secs(1) {
            return None;
        }
        let bytes: u64 =
            s.1.iter()
                .filter(|(t, _)| now - *t <= RATE_WINDOW)
                .map(|(_, n)| n)
                .sum();
        #[allow(clippy::cast_precision_loss)]
        Some(bytes as f64 / span.as_secs_f64())
    }
}

/// The `{rate}` of a bar's template: its [`Window`]'s rate, or blanks.
#[derive(Clone)]
struct Rate(Option<Arc<Window>>);

impl indicatif::style::ProgressTracker for Rate {
    fn clone_box(&self) -> Box<dyn indicatif::style::ProgressTracker> {
        Box::new(self.clone())
    }
    fn tick(&mut self, _: &indicatif::ProgressState, _: Instant) {}
    fn reset(&mut self, _: &indicatif::ProgressState, _: Instant) {}
    fn write(&self, _: &indicatif::ProgressState, w: &mut dyn std::fmt::Write) {
        let shown = match self.0.as_ref().and_then(|r| r.rate()) {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Some(r) => format!("{}/s", indicatif::BinaryBytes(r as u64)),
            None => String::new(),
        };
        let _ = write!(w, "{shown:>RATE_WIDTH$}");
    }
}

/// `text` in exactly [`LABEL`] columns: cut from the left (the tag's end is what tells
/// images apart: `…4.1-devel-ubuntu22.04`), or padded.
fn label(text: &str) -> String {
    format!("{:<LABEL$}", super::width::shorten_left(text, LABEL))
}

/// Bars: one for the whole image, one per blob in flight.
struct Bars {
    multi: MultiProgress,
    total: Mutex<Option<ProgressBar>>,
    blobs: Mutex<HashMap<Digest, ProgressBar>>,
    /// Per blob, the offset it first started at: bytes an earlier run left, which the
    /// total (what remains to fetch) does not count.
    resumed: Mutex<HashMap<Digest, u64>>,
    /// Bytes of this run, for the rates: the image's, and each rated blob's.
    rate: Arc<Window>,
    rates: Mutex<HashMap<Digest, Arc<Window>>>,
}

impl Bars {
    fn new() -> Self {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            total: Mutex::new(None),
            blobs: Mutex::new(HashMap::new()),
            resumed: Mutex::new(HashMap::new()),
            rate: Arc::default(),
            rates: Mutex::new(HashMap::new()),
        }
    }

    fn style(template: &str, rate: Option<Arc<Window>>) -> ProgressStyle {
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key("rate", Rate(rate))
            .progress_chars("=> ")
    }

    /// A blob's bar: its short digest and `what` (the host, `uploading`) as its label, and
    /// a rate only when the blob is big enough for one to mean something.
    fn blob_bar(&self, digest: &Digest, size: u64, what: &str) -> ProgressBar {
        let rate = (size >= MIN_RATED).then(|| {
            let w = Arc::new(Window::default());
            if let Ok(mut rates) = self.rates.lock() {
                rates.insert(digest.clone(), w.clone());
            }
            w
        });
        let bar = self
            .multi
            .add(ProgressBar::new(size).with_style(Self::style(BLOB_TEMPLATE, rate)));
        bar.set_message(blob_label(digest, what));
        bar
    }

    /// A line above the bars, which stay where they are; wrapped at the terminal's width
    /// (a line the terminal wrapped itself would leave the bars drawn over its end).
    fn say(&self, line: &str) {
        let cols = console::Term::stderr()
            .size_checked()
            .map_or(80, |(_, c)| usize::from(c).max(20));
        for l in super::width::hanging("", line, Some(cols)) {
            let _ = self.multi.println(l);
        }
    }

    /// Counts `bytes` of this run into the rates.
    fn count(&self, digest: &Digest, bytes: u64) {
        self.rate.add(bytes);
        if let Some(w) = self.rates.lock().ok().and_then(|r| r.get(digest).cloned()) {
            w.add(bytes);
        }
    }
}

impl Reporter for Bars {
    fn resolved(
        &self,
        name: &str,
        _digest: &Digest,
        platform: &Platform,
        _total: u64,
        to_fetch: u64,
    ) {
        let bar = self.multi.add(
            ProgressBar::new(to_fetch)
                .with_style(Self::style(TOTAL_TEMPLATE, Some(self.rate.clone()))),
        );
        // The repository's last segment and the tag: the registry and `nvidia/` are the
        // same on every line, and the column is narrow. The platform is left to the lines
        // and the report: beside the name it would leave the tag no room.
        let _ = platform;
        let short = name.rsplit('/').next().unwrap_or(name);
        bar.set_message(label(short));
        if let Ok(mut t) = self.total.lock() {
            *t = Some(bar);
        }
    }
    fn blob_started(&self, digest: &Digest, size: u64, offset: u64, source: &str) {
        let host = source.split("://").nth(1).unwrap_or(source).to_owned();
        if let Ok(mut blobs) = self.blobs.lock() {
            let bar = blobs
                .entry(digest.clone())
                .or_insert_with(|| self.blob_bar(digest, size, &host));
            bar.set_message(blob_label(digest, &host));
            // A restart or resume moves the blob's position; the total moves with it, so
            // discarded bytes do not count twice. The total counts from where the blob
            // first started (an earlier run's bytes are not "to fetch"); falling below
            // that (the partial bytes were discarded) adds them to it.
            let Ok(mut resumed) = self.resumed.lock() else {
                return;
            };
            let base = *resumed.entry(digest.clone()).or_insert(offset);
            let was = bar.position().max(base);
            bar.set_position(offset);
            // The blob's share of the total is its position past its base.
            let new_base = base.min(offset);
            resumed.insert(digest.clone(), new_base);
            if let Ok(t) = self.total.lock() {
                if let Some(t) = t.as_ref() {
                    t.inc_length(base - new_base);
                    t.set_position((t.position() + (offset - new_base)).saturating_sub(was - base));
                }
            }
        }
    }
    fn notice(&self, line: &str) {
        self.say(line);
    }
    fn blob_progress(&self, digest: &Digest, bytes: u64) {
        self.count(digest, bytes);
        if let Ok(blobs) = self.blobs.lock() {
            if let Some(b) = blobs.get(digest) {
                b.inc(bytes);
            }
        }
        if let Ok(t) = self.total.lock() {
            if let Some(t) = t.as_ref() {
                t.inc(bytes);
            }
        }
    }
    fn blob_finished(&self, digest: &Digest) {
        if let Ok(blobs) = self.blobs.lock() {
            if let Some(b) = blobs.get(digest) {
                b.finish_with_message(blob_label(digest, "verified"));
            }
        }
    }
    fn push_planned(&self, name: &str, destination: &str, _blobs: usize, total: u64) {
        let bar = self.multi.add(
            ProgressBar::new(total)
                .with_style(Self::style(TOTAL_TEMPLATE, Some(self.rate.clone()))),
        );
        bar.set_message(label(&format!("{name} -> {destination}")));
        if let Ok(mut t) = self.total.lock() {
            *t = Some(bar);
        }
    }
    fn upload_started(&self, digest: &Digest, size: u64) {
        if let Ok(mut blobs) = self.blobs.lock() {
            blobs
                .entry(digest.clone())
                .or_insert_with(|| self.blob_bar(digest, size, "uploading"));
        }
    }
    fn upload_progress(&self, digest: &Digest, bytes: u64) {
        self.count(digest, bytes);
        // Re-sent bytes after a cut count again on the blob's bar, never past its size.
        if let Ok(blobs) = self.blobs.lock() {
            if let Some(b) = blobs.get(digest) {
                b.set_position((b.position() + bytes).min(b.length().unwrap_or(u64::MAX)));
            }
        }
        if let Ok(t) = self.total.lock() {
            if let Some(t) = t.as_ref() {
                t.inc(bytes);
            }
        }
    }
    fn upload_finished(&self, digest: &Digest, size: u64, how: &str) {
        let sent = match self.blobs.lock() {
            Ok(blobs) => blobs.get(digest).map(|b| {
                let sent = b.position();
                b.set_position(size);
                b.finish_with_message(blob_label(digest, how));
                sent
            }),
            Err(_) => None,
        };
        if let Ok(t) = self.total.lock() {
            if let Some(t) = t.as_ref() {
                t.inc(size.saturating_sub(sent.unwrap_or(0)));
            }
        }
    }
    fn source_failed(&self, source: &str, what: &str, error: &(dyn std::error::Error + 'static)) {
        self.say(&format!(
            "{source} failed for {what}: {}; trying the next source",
            chain(error)
        ));
    }
}

/// A blob's label: `  HEX12 what`, `what` cut from the left to fit [`LABEL`].
fn blob_label(digest: &Digest, what: &str) -> String {
    let hex = digest.short().get(7..).unwrap_or_default().to_owned();
    let room = LABEL.saturating_sub(hex.len() + 3);
    label(&format!(
        "  {hex} {}",
        super::width::shorten_left(what, room)
    ))
}

impl Drop for Bars {
    fn drop(&mut self) {
        if let Ok(t) = self.total.lock() {
            if let Some(t) = t.as_ref() {
                t.finish();
            }
        }
        let _ = self.multi.clear();
    }
}
