//! The one client of the control protocol, used by every command that talks
//! to a node (the CLI, the demo, the scenario runner, watch, release).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use relive_releases::store::ReleaseInfo;

use crate::protocol::{
    self, DeployRequest, Deployed, Envelope, Failure, MessageRequest, Permanent, Progress, Reply, Request,
    Response, RollbackRequest, Status,
};

/// The control socket's name in the root.
pub const SOCKET: &str = "control.sock";

/// Why a request got no success answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No node listens on the root.
    #[error("no node is running on {} (start one with `relive node start --root {}`)", .root.display(), .root.display())]
    NoNode {
        /// The root.
        root: PathBuf,
    },
    /// The socket belongs to another user.
    #[error("cannot connect to {}: permission denied: the node runs as another user; run the command as that user", .socket.display())]
    PermissionDenied {
        /// The socket.
        socket: PathBuf,
    },
    /// Talking to the node failed.
    #[error("talking to the node on {}: {source}", .socket.display())]
    Io {
        /// The socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The node closed the connection before it answered.
    #[error("the node on {} closed the connection without answering (did it stop?)", .socket.display())]
    Closed {
        /// The socket.
        socket: PathBuf,
    },
    /// The node answered something this client cannot read.
    #[error("the node on {} answered a line this relive cannot read ({error}): {line}; is the node another version of relive?", .socket.display())]
    BadReply {
        /// The socket.
        socket: PathBuf,
        /// The line.
        line: String,
        /// Why.
        error: String,
    },
    /// The node answered with another kind of response than the request's.
    #[error("the node on {} answered a {request} request with {response}", .socket.display())]
    Unexpected {
        /// The socket.
        socket: PathBuf,
        /// The request's name.
        request: &'static str,
        /// What came back.
        response: String,
    },
    /// The node refused the request or it failed; the node's own words.
    #[error("{0}")]
    Refused(Box<Failure>),
}

impl ClientError {
    /// The node's failure, when it refused.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            ClientError::Refused(failure) => Some(failure),
            _ => None,
        }
    }
}

/// A connection to a node's control socket.
pub struct Client {
    socket: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the node on `root`.
    ///
    /// # Errors
    /// [`ClientError::NoNode`], [`ClientError::PermissionDenied`],
    /// [`ClientError::Io`].
    pub fn connect(root: &Path) -> Result<Client, ClientError> {
        let socket = root.join(SOCKET);
        let stream = match UnixStream::connect(&socket) {
            Ok(stream) => stream,
            Err(error)
                if matches!(error.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) =>
            {
                return Err(ClientError::NoNode { root: root.to_path_buf() });
            }
            Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {
                return Err(ClientError::PermissionDenied { socket });
            }
            Err(source) => return Err(ClientError::Io { socket, source }),
        };
        let writer =
            stream.try_clone().map_err(|source| ClientError::Io { socket: socket.clone(), source })?;
        Ok(Client { socket, reader: BufReader::new(stream), writer })
    }

    /// Gives up on a request whose answer takes longer than `timeout`
    /// between two lines (`None`: wait as long as it takes).
    ///
    /// # Errors
    /// [`ClientError::Io`].
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.reader.get_ref().set_read_timeout(timeout).map_err(|source| self.io(source))
    }

    fn io(&self, source: io::Error) -> ClientError {
        ClientError::Io { socket: self.socket.clone(), source }
    }

    /// Sends `request` and reads its answer; `progress` (if given) gets
    /// each progress line first.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with the node's failure; the others when
    /// the node cannot be talked to.
    pub fn request(
        &mut self,
        request: &Request,
        mut progress: Option<&mut dyn FnMut(&Progress)>,
    ) -> Result<Response, ClientError> {
        let mut line = protocol::encode(&Envelope::new(request.clone(), progress.is_some()));
        line.push('\n');
        // A node that refuses the connection (another uid) answers and
        // closes at once: the write may fail while its answer waits to be
        // read, so the answer is read first and the write's error kept.
        let sent = self.writer.write_all(line.as_bytes()).and_then(|()| self.writer.flush());
        loop {
            let mut answer = String::new();
            match self.reader.read_line(&mut answer) {
                Ok(0) => {
                    return Err(match sent {
                        Err(source) => self.io(source),
                        Ok(()) => ClientError::Closed { socket: self.socket.clone() },
                    });
                }
                Ok(_) => {}
                Err(error) => return Err(self.io(sent.err().unwrap_or(error))),
            }
            let reply: Reply =
                serde_json::from_str(answer.trim_end()).map_err(|e| ClientError::BadReply {
                    socket: self.socket.clone(),
                    line: answer.trim_end().to_string(),
                    error: e.to_string(),
                })?;
            match reply {
                Reply::Progress(step) => {
                    if let Some(progress) = progress.as_mut() {
                        progress(&step);
                    }
                }
                Reply::Ok(response) => return Ok(response),
                Reply::Error(failure) => return Err(ClientError::Refused(Box::new(failure))),
            }
        }
    }

    fn unexpected(&self, request: &Request, response: &Response) -> ClientError {
        let text = protocol::encode(response);
        let response = text.chars().take(200).collect();
        ClientError::Unexpected { socket: self.socket.clone(), request: request.name(), response }
    }

    /// [`Request::Ping`]: the node's pid.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub fn ping(&mut self) -> Result<u32, ClientError> {
        let request = Request::Ping;
        match self.request(&request, None)? {
            Response::Pong(pid) => Ok(pid),
            other => Err(self.unexpected(&request, &other)),
        }
    }

    /// [`Request::Status`].
    ///
    /// # Errors
    /// As [`Client::request`].
    pub fn status(&mut self) -> Result<Status, ClientError> {
        let request = Request::Status;
        match self.request(&request, None)? {
            Response::Status(status) => Ok(*status),
            other => Err(self.unexpected(&request, &other)),
        }
    }

    /// [`Request::Releases`].
    ///
    /// # Errors
    /// As [`Client::request`].
    pub fn releases(&mut self) -> Result<Vec<ReleaseInfo>, ClientError> {
        let request = Request::Releases;
        match self.request(&request, None)? {
            Response::Releases(releases) => Ok(releases),
            other => Err(self.unexpected(&request, &other)),
        }
    }

    /// [`Request::Deploy`] (not a dry run).
    ///
    /// # Errors
    /// As [`Client::request`].
    pub fn deploy(
        &mut self,
        deploy: DeployRequest,
        progress: Option<&mut dyn FnMut(&Progress)>,
    ) -> Result<Deployed, ClientError> {
        let request = Request::Deploy(deploy);
        match self.request(&request, progress)? {
            Response::Deployed(deployed) => Ok(*deployed),
            other => Err(self.unexpected(&request, &other)),
        }
    }

    /// [`Request::Rollback`].
    ///
    /// # Errors
    /// As [`Client::request`].
    pub fn rollback(
        &mut self,
        to: Option<semver::Version>,
        progress: Option<&mut dyn FnMut(&Progress)>,
    ) -> Result<Deployed, ClientError> {
        let request = Request::Rollback(RollbackRequest { to });
        match self.request(&request, progress)? {
            Response::RolledBack(deployed) => Ok(*deployed),
            other => Err(self.unexpected(&request, &other)),
        }
    }

    /// [`Request::MakePermanent`], or with `version`
    /// [`Request::MakePermanentIfRunning`].
    ///
    /// # Errors
    /// As [`Client::request`].
    pub fn make_permanent(&mut self, version: Option<semver::Version>) -> Result<Permanent, ClientError> {
        let request = Request::make_permanent(version);
        match self.request(&request, None)? {
            Response::Permanent(permanent) => Ok(permanent),
            other => Err(self.unexpected(&request, &other)),
        }
    }

    /// [`Request::Call`]: the process's reply.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub fn call(&mut self, name: &str, message: serde_json::Value) -> Result<serde_json::Value, ClientError> {
        let request = Request::Call(MessageRequest { name: name.to_string(), message });
        match self.request(&request, None)? {
            Response::Reply(reply) => Ok(reply),
            other => Err(self.unexpected(&request, &other)),
        }
    }

    /// [`Request::Cast`].
    ///
    /// # Errors
    /// As [`Client::request`].
    pub fn cast(&mut self, name: &str, message: serde_json::Value) -> Result<(), ClientError> {
        let request = Request::Cast(MessageRequest { name: name.to_string(), message });
        match self.request(&request, None)? {
            Response::Cast => Ok(()),
            other => Err(self.unexpected(&request, &other)),
        }
    }

    /// [`Request::Stop`]: the node's pid (it exits right after answering).
    ///
    /// # Errors
    /// As [`Client::request`].
    pub fn stop(&mut self) -> Result<u32, ClientError> {
        let request = Request::Stop;
        match self.request(&request, None)? {
            Response::Stopped(pid) => Ok(pid),
            other => Err(self.unexpected(&request, &other)),
        }
    }
}

/// One request on a connection of its own.
///
/// # Errors
/// As [`Client::connect`] and [`Client::request`].
pub fn request(
    root: &Path,
    request: &Request,
    progress: Option<&mut dyn FnMut(&Progress)>,
) -> Result<Response, ClientError> {
    Client::connect(root)?.request(request, progress)
}
