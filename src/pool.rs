//! The pool interface: a node whose handler runs on a fixed thread pool, and which is also
//! an executor (`submit`, `map`, `shutdown`) — the shape of libchirp's Python `libchirp.pool`.
//!
//! With `auto_release` on (the default) the pool holds the received message's slot while the
//! handler runs and releases it when the handler returns — even if the handler kept or sent
//! the message. With it off, the message keeps its slot and the application releases it
//! ([`Message::release`]) or drops it; a slot cannot leak.
//!
//! A handler that returns an error has the error logged with the message identity; a handler
//! that panics is logged too, and neither the worker thread nor the node is lost.
//!
//! **Do not wait for an answer while holding the request.** In synchronous mode a send
//! completes when the peer released it. A handler that answers a message and waits for that
//! answer's send *while the request's slot is held* (auto-release holds it until the
//! handler returns) waits on the peer — and a peer that, like libchirp's own queue
//! examples, waits for its request's send before reading the answer waits on the handler.
//! Both time out. Either answer without waiting (`drop(chirp.send(answer))`, and return), or
//! turn `auto_release` off and release the request first, as below.
//!
//! # Examples
//!
//! ```
//! use libchirp::{pool::Chirp, Config, Message};
//!
//! let mut config = Config::default();
//! config.port = 0;
//! config.disable_encryption = true;
//! config.auto_release = false;
//! // An echo node: releases each request, then sends it back and waits for that.
//! let echo = Chirp::new(config.clone(), |chirp, mut msg| {
//!     let _ = msg.release();
//!     chirp.send(msg).wait()?;
//!     Ok(())
//! })?;
//! let client = Chirp::new(config, |_, _| Ok(()))?;
//! let to = format!("127.0.0.1:{}", echo.port()).parse()?;
//! let answer = client.request(Message::to(to, b"hello")).wait()?;
//! assert_eq!(answer.data(), b"hello");
//! drop(answer);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::any::Any;
use std::collections::VecDeque;
use std::ops::Deref;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use threadpool::ThreadPool;

use crate::completion::Completion;
use crate::config::Config;
use crate::error::Error;
use crate::message::Message;
use crate::node::{Node, WeakNode};

/// What a handler returns: `Ok(())` or any error, which is logged.
pub type HandlerResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

struct Shared {
    pool: Mutex<ThreadPool>,
    shut_down: AtomicBool,
}

impl Shared {
    fn pool(&self) -> std::sync::MutexGuard<'_, ThreadPool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A node whose received messages are handled on a thread pool. Dereferences to [`Node`]
/// for `send`, `request`, `port`, `identity`, `stats`,
/// `reload_tls` (a new certificate without a restart) and `close`.
pub struct Chirp {
    node: Node,
    shared: Arc<Shared>,
}

fn panic_text(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

impl Chirp {
    /// Starts a node whose `handler` runs on `config.pool_threads` threads (default: the
    /// number of CPUs). The handler gets a handle to send with (it does not keep the node
    /// open) and the message by value.
    pub fn new<H>(config: Config, handler: H) -> Result<Chirp, Error>
    where
        H: Fn(&Node, Message) -> HandlerResult + Send + Sync + 'static,
    {
        let threads = config.validate()?.pool_threads();
        let auto_release = config.auto_release;
        let shared = Arc::new(Shared {
            pool: Mutex::new(
                threadpool::Builder::new()
                    .num_threads(threads)
                    .thread_name("chirp-handler".into())
                    .build(),
            ),
            shut_down: AtomicBool::new(false),
        });
        let handler = Arc::new(handler);
        let sink_shared = shared.clone();
        let node = Node::start_with(config, move |weak: WeakNode| {
            Box::new(move |mut msg: Message| {
                if sink_shared.shut_down.load(Ordering::Acquire) {
                    log::debug!(
                        "pool shut down: releasing message {} unhandled",
                        msg.identity()
                    );
                    return;
                }
                let slot = if auto_release { msg.slot.take() } else { None };
                let handler = handler.clone();
                let weak = weak.clone();
                sink_shared.pool().execute(move || {
                    let identity = msg.identity();
                    let Some(node) = weak.upgrade() else { return };
                    match catch_unwind(AssertUnwindSafe(|| handler(&node, msg))) {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => log::error!("handler failed for message {identity}: {e}"),
                        Err(p) => log::error!(
                            "handler panicked for message {identity}: {}",
                            panic_text(&*p)
                        ),
                    }
                    // Auto-release: the slot goes back once the handler returned.
                    drop(slot);
                });
            })
        })?;
        Ok(Chirp { node, shared })
    }

    /// The underlying node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Runs `task` on the pool; the completion gives its result, or an error if the pool is
    /// shut down or the task panicked.
    pub fn submit<T, F>(&self, task: F) -> Completion<Result<T, Error>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if self.shared.shut_down.load(Ordering::Acquire) {
            return Completion::ready(Err(Error::Shutdown));
        }
        let (completion, done) = Completion::pair();
        self.shared.pool().execute(move || {
            let r = catch_unwind(AssertUnwindSafe(task)).map_err(|p| Error::TaskPanicked {
                message: panic_text(&*p),
            });
            done.complete(r);
        });
        completion
    }

    /// Applies `f` to every item on the pool and yields the results in input order.
    ///
    /// ```
    /// # let mut config = libchirp::Config::default();
    /// # config.port = 0; config.disable_encryption = true;
    /// let chirp = libchirp::pool::Chirp::new(config, |_, _| Ok(()))?;
    /// let squares: Vec<u64> = chirp.map(|x: u64| x * x, 1..=4).map(|r| r.unwrap()).collect();
    /// assert_eq!(squares, [1, 4, 9, 16]);
    /// # Ok::<(), libchirp::Error>(())
    /// ```
    pub fn map<I, T, R, F>(&self, f: F, items: I) -> impl Iterator<Item = Result<R, Error>>
    where
        I: IntoIterator<Item = T>,
        T: Send + 'static,
        R: Send + 'static,
        F: Fn(T) -> R + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let pending: VecDeque<Completion<Result<R, Error>>> = items
            .into_iter()
            .map(|item| {
                let f = f.clone();
                self.submit(move || f(item))
            })
            .collect();
        pending.into_iter().map(Completion::wait)
    }

    /// Stops handing messages and tasks to the pool (later messages are released unhandled,
    /// later tasks fail with [`Error::Shutdown`]). With `wait`, returns once every running
    /// and queued handler and task finished; without, returns at once.
    pub fn shutdown(&self, wait: bool) {
        self.shared.shut_down.store(true, Ordering::Release);
        if wait {
            let pool = self.shared.pool().clone();
            pool.join();
        }
    }

    /// Closes the node (failing pending sends, which unblocks handlers waiting on them), then
    /// waits for the pool's running handlers to finish.
    pub fn close(&self) {
        self.shared.shut_down.store(true, Ordering::Release);
        self.node.close();
        let pool = self.shared.pool().clone();
        pool.join();
    }
}

impl Deref for Chirp {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.node
    }
}

impl Drop for Chirp {
    fn drop(&mut self) {
        self.close();
    }
}

impl std::fmt::Debug for Chirp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("pool::Chirp")
            .field("node", &self.node)
            .finish()
    }
}
