//! Runs one phase: `depth` streams, each with at most one request in flight, so the
//! server sees `depth` outstanding requests, as from `depth` guest processes. An op's
//! latency runs from its first request's submission to its last reply's arrival.

use std::time::{Duration, Instant};

use crate::ops::{Ctx, Next, Op, Stream};
use crate::session::{Reply, Session, SessionError};
use crate::stats::PhaseStats;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Opening the file or directory the stream works on.
    Setup,
    /// An op in flight since this instant.
    Running(Instant),
    /// Closing what setup opened.
    Teardown,
    Idle,
}

struct Runner<'a> {
    s: &'a mut Session,
    ctx: &'a mut Ctx,
    op: Op,
    deadline: Instant,
    streams: Vec<(State, Stream)>,
    lat_ns: Vec<u64>,
    /// When the first op started (setup is not timed).
    first_start: Option<Instant>,
    last_done: Instant,
}

impl Runner<'_> {
    fn err(&self, e: crate::reply::ReplyError) -> SessionError {
        self.s.reply_err(e)
    }

    fn begin(&mut self, i: usize) -> Result<(), SessionError> {
        match self.ctx.setup(self.op) {
            Some(req) => {
                self.s.submit(i, &req)?;
                self.streams[i].0 = State::Setup;
                Ok(())
            }
            None => self.start_op(i),
        }
    }

    fn start_op(&mut self, i: usize) -> Result<(), SessionError> {
        let now = Instant::now();
        let in_time = !self.op.timed() || now < self.deadline;
        if in_time && self.ctx.claim(self.op, &mut self.streams[i].1).is_some() {
            let req = self.ctx.first(self.op, &self.streams[i].1);
            self.s.submit(i, &req)?;
            self.streams[i].0 = State::Running(now);
            self.first_start.get_or_insert(now);
            return Ok(());
        }
        match self.ctx.teardown(self.op, &self.streams[i].1) {
            Some(req) => {
                self.s.submit(i, &req)?;
                self.streams[i].0 = State::Teardown;
            }
            None => self.streams[i].0 = State::Idle,
        }
        Ok(())
    }

    fn complete(&mut self, i: usize, reply: &Reply) -> Result<(), SessionError> {
        match self.streams[i].0 {
            State::Setup => {
                let (op, st) = (self.op, &mut self.streams[i].1);
                self.ctx.on_setup(op, st, reply).map_err(|e| self.err(e))?;
                self.start_op(i)
            }
            State::Running(started) => {
                let (op, st) = (self.op, &mut self.streams[i].1);
                match self.ctx.next(op, st, reply).map_err(|e| self.err(e))? {
                    Next::Send(req) => self.s.submit(i, &req),
                    Next::Done => {
                        let now = Instant::now();
                        self.lat_ns.push((now - started).as_nanos() as u64);
                        self.last_done = now;
                        self.start_op(i)
                    }
                }
            }
            State::Teardown => {
                reply.ok().map_err(|e| self.err(e))?;
                self.streams[i].0 = State::Idle;
                Ok(())
            }
            State::Idle => Ok(()),
        }
    }
}

/// Runs `op` on `depth` streams for `budget` (rename and unlink: until done), then sends
/// the FORGETs the guest would. Returns the phase's figures.
pub fn run_phase(
    s: &mut Session,
    ctx: &mut Ctx,
    op: Op,
    budget: Duration,
) -> Result<PhaseStats, SessionError> {
    let depth = s.depth();
    let start = Instant::now();
    let mut r = Runner {
        s,
        ctx,
        op,
        deadline: start + budget,
        streams: vec![(State::Idle, Stream::default()); depth],
        lat_ns: Vec::new(),
        first_start: None,
        last_done: start,
    };
    for i in 0..depth {
        r.begin(i)?;
    }
    r.s.flush()?;
    while r.streams.iter().any(|(st, _)| *st != State::Idle) {
        for done in r.s.wait()? {
            r.complete(done.slot, &done.reply)?;
        }
        r.s.flush()?;
    }
    let wall = r
        .last_done
        .saturating_duration_since(r.first_start.unwrap_or(start));
    let stats = PhaseStats::from_latencies(std::mem::take(&mut r.lat_ns), wall);
    let forgets = ctx.end_phase(op);
    s.forget(&forgets)?;
    Ok(stats)
}
