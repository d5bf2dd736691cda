//! A small blocking 9P2000.L client over any stream: what the tests and
//! the load generator in `benches/` drive servers with (Strata's and
//! `diod`). One request at a time with [`Client::call`], or several in
//! flight with [`Client::send`] and [`Client::recv`].

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;

use bytes::Bytes;

use crate::proto::{self, Reply, Request, NOFID};
use crate::wire::Qid;
use crate::Listen;

/// A client failure: the connection's, the codec's, or the server's
/// `Rlerror`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("undecodable reply: {0}")]
    Decode(#[from] crate::wire::DecodeError),
    #[error("server error: {}", std::io::Error::from_raw_os_error(*.0 as i32))]
    Remote(u32),
    #[error("unexpected reply {0}")]
    Unexpected(&'static str),
}

/// The stream a client talks over.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A 9P2000.L client.
pub struct Client {
    stream: Box<dyn Stream>,
    next_tag: u16,
    /// The negotiated message size.
    pub msize: u32,
    buf: Vec<u8>,
}

impl Client {
    /// Connects to `listen` (Unix or TCP) and negotiates `msize`.
    pub fn connect(listen: &Listen, msize: u32) -> Result<Client, ClientError> {
        let stream: Box<dyn Stream> = match listen {
            Listen::Unix(path) => Box::new(UnixStream::connect(path)?),
            Listen::Tcp(addr) => {
                let s = TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
            Listen::Fd(_) => {
                return Err(ClientError::Io(std::io::Error::other(
                    "a client cannot connect to an inherited descriptor",
                )))
            }
        };
        Client::over(stream, msize)
    }

    /// A client over an open stream; negotiates `msize`.
    pub fn over(stream: Box<dyn Stream>, msize: u32) -> Result<Client, ClientError> {
        let mut c = Client {
            stream,
            next_tag: 0,
            msize,
            buf: Vec::new(),
        };
        c.send_tagged(
            proto::NOTAG,
            &Request::Version {
                msize,
                version: proto::VERSION_9P2000_L.to_vec(),
            },
        )?;
        match c.recv()?.1 {
            Reply::Version { msize, version } if version == proto::VERSION_9P2000_L => {
                c.msize = msize;
                Ok(c)
            }
            Reply::Version { .. } => Err(ClientError::Unexpected("version refused")),
            other => Err(ClientError::Unexpected(other.name())),
        }
    }

    /// Sends `req` with the next tag; returns the tag.
    pub fn send(&mut self, req: &Request) -> Result<u16, ClientError> {
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1) % proto::NOTAG;
        self.send_tagged(tag, req)?;
        Ok(tag)
    }

    /// Sends `req` with `tag`.
    pub fn send_tagged(&mut self, tag: u16, req: &Request) -> Result<(), ClientError> {
        self.buf.clear();
        req.encode(tag, &mut self.buf);
        self.stream.write_all(&self.buf)?;
        Ok(())
    }

    /// Sends raw bytes (for malformed-message tests).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Receives the next reply: its tag and the reply.
    pub fn recv(&mut self) -> Result<(u16, Reply), ClientError> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size)?;
        let size = u32::from_le_bytes(size) as usize;
        if !(7..=self.msize as usize + 64).contains(&size) {
            return Err(ClientError::Unexpected("reply size out of range"));
        }
        let mut body = vec![0u8; size - 4];
        self.stream.read_exact(&mut body)?;
        Ok(proto::decode_reply(Bytes::from(body))?)
    }

    /// Sends `req` and waits for its reply; `Rlerror` becomes an error.
    pub fn call(&mut self, req: &Request) -> Result<Reply, ClientError> {
        let tag = self.send(req)?;
        let (got, reply) = self.recv()?;
        if got != tag {
            return Err(ClientError::Unexpected("reply to another tag"));
        }
        match reply {
            Reply::Lerror { ecode } => Err(ClientError::Remote(ecode)),
            r => Ok(r),
        }
    }

    /// Attaches `fid` to the mount `aname` as user `uid`.
    pub fn attach(&mut self, fid: u32, aname: &str, uid: u32) -> Result<Qid, ClientError> {
        match self.call(&Request::Attach {
            fid,
            afid: NOFID,
            uname: b"root".to_vec(),
            aname: aname.as_bytes().to_vec(),
            n_uname: uid,
        })? {
            Reply::Attach { qid } => Ok(qid),
            r => Err(ClientError::Unexpected(r.name())),
        }
    }

    /// Walks `fid` along `path` (split at `/`) to `newfid`; fails unless
    /// every name was found.
    pub fn walk(&mut self, fid: u32, newfid: u32, path: &str) -> Result<Vec<Qid>, ClientError> {
        let names: Vec<Vec<u8>> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| s.as_bytes().to_vec())
            .collect();
        let mut qids = Vec::new();
        let mut from = fid;
        let chunks: Vec<&[Vec<u8>]> = if names.is_empty() {
            vec![&[]]
        } else {
            names.chunks(proto::MAXWELEM).collect()
        };
        for chunk in chunks {
            match self.call(&Request::Walk {
                fid: from,
                newfid,
                names: chunk.to_vec(),
            })? {
                Reply::Walk { qids: q } if q.len() == chunk.len() => qids.extend(q),
                Reply::Walk { .. } => return Err(ClientError::Remote(libc::ENOENT as u32)),
                r => return Err(ClientError::Unexpected(r.name())),
            }
            from = newfid;
        }
        Ok(qids)
    }

    /// Opens `fid` with Linux open `flags`.
    pub fn lopen(&mut self, fid: u32, flags: u32) -> Result<Qid, ClientError> {
        match self.call(&Request::Lopen { fid, flags })? {
            Reply::Lopen { qid, .. } => Ok(qid),
            r => Err(ClientError::Unexpected(r.name())),
        }
    }

    /// Creates and opens `name` in directory `fid` (which becomes the file).
    pub fn lcreate(&mut self, fid: u32, name: &str, mode: u32) -> Result<Qid, ClientError> {
        match self.call(&Request::Lcreate {
            fid,
            name: name.as_bytes().to_vec(),
            flags: libc::O_RDWR as u32,
            mode,
            gid: 0,
        })? {
            Reply::Lcreate { qid, .. } => Ok(qid),
            r => Err(ClientError::Unexpected(r.name())),
        }
    }

    /// Reads up to `count` bytes at `offset`.
    pub fn read(&mut self, fid: u32, offset: u64, count: u32) -> Result<Bytes, ClientError> {
        match self.call(&Request::Read { fid, offset, count })? {
            Reply::Read { data } => Ok(data),
            r => Err(ClientError::Unexpected(r.name())),
        }
    }

    /// Writes `data` at `offset`; returns the count written. (Encoded
    /// here with one copy of the data, not through [`Request::Write`]'s
    /// owned buffer: the load generator should cost the servers' share.)
    pub fn write(&mut self, fid: u32, offset: u64, data: &[u8]) -> Result<u32, ClientError> {
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1) % proto::NOTAG;
        self.buf.clear();
        let size = (proto::WRITE_OVERHEAD as usize + data.len()) as u32;
        self.buf.extend_from_slice(&size.to_le_bytes());
        self.buf.push(118);
        self.buf.extend_from_slice(&tag.to_le_bytes());
        self.buf.extend_from_slice(&fid.to_le_bytes());
        self.buf.extend_from_slice(&offset.to_le_bytes());
        self.buf
            .extend_from_slice(&(data.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(data);
        self.stream.write_all(&self.buf)?;
        match self.recv()? {
            (got, _) if got != tag => Err(ClientError::Unexpected("reply to another tag")),
            (_, Reply::Write { count }) => Ok(count),
            (_, Reply::Lerror { ecode }) => Err(ClientError::Remote(ecode)),
            (_, r) => Err(ClientError::Unexpected(r.name())),
        }
    }

    /// Clunks `fid`.
    pub fn clunk(&mut self, fid: u32) -> Result<(), ClientError> {
        self.call(&Request::Clunk { fid }).map(|_| ())
    }

    /// Attributes of `fid` (the whole `Rgetattr`).
    pub fn getattr(&mut self, fid: u32) -> Result<Reply, ClientError> {
        self.call(&Request::Getattr {
            fid,
            mask: proto::getattr::BASIC,
        })
    }

    /// Every entry of the open directory `fid`.
    pub fn readdir_all(&mut self, fid: u32) -> Result<Vec<proto::DirEntry>, ClientError> {
        let mut out = Vec::new();
        let mut offset = 0;
        loop {
            let data = match self.call(&Request::Readdir {
                fid,
                offset,
                count: self.msize - 24,
            })? {
                Reply::Readdir { data } => data,
                r => return Err(ClientError::Unexpected(r.name())),
            };
            let entries = proto::decode_dir_entries(data)?;
            match entries.last() {
                None => return Ok(out),
                Some(last) => offset = last.offset,
            }
            out.extend(entries);
        }
    }
}
