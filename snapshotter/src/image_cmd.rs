//! `snapctl image import|ls|show|rm|export` and `snapctl mount|mounts|umount`:
//! requests to the node daemon, which owns the store and every mount.

use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use layerfs::{ExportStats, ImageInfo, ImportLimits, ImportReport, SourceKind};

use crate::api::{self, ExportTarget, MountInfo, Op};
use crate::client::{self, Client};
use crate::exit;
use crate::output::{human_bytes, parse_size, Output};

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Import SOURCE (an OCI layout directory, a `docker save` archive, a
    /// root-filesystem tarball, or a directory) as image NAME.
    Import(ImportArgs),
    /// List images.
    Ls,
    /// Show one image: its tree, layers and configuration.
    Show { name: String },
    /// Remove an image (its data is collected by the next `store gc`).
    Rm { name: String },
    /// Write image NAME as a tar archive to OUT ("-" for stdout).
    Export { name: String, out: PathBuf },
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    source: PathBuf,
    /// Name of the new image.
    #[arg(long)]
    name: String,
    /// What SOURCE is; detected when not given.
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Which image of a multi-image source (OCI ref name or docker tag).
    #[arg(long)]
    tag: Option<String>,
    /// Refuse device nodes in the source.
    #[arg(long)]
    no_devices: bool,
    /// Most uncompressed bytes to read (e.g. 64G).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    max_bytes: Option<u64>,
    /// Largest single file (e.g. 16G).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    max_file_bytes: Option<u64>,
    /// Most entries in one archive.
    #[arg(long)]
    max_entries: Option<u64>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Oci,
    Docker,
    Tar,
    Dir,
}

pub fn run(cmd: ImageCommand, home: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(home)?;
    match cmd {
        ImageCommand::Import(args) => {
            let defaults = ImportLimits::default();
            let source = std::fs::canonicalize(&args.source)
                .with_context(|| format!("import source {}", args.source.display()))?;
            let request = api::ImageImport {
                source,
                name: args.name,
                kind: args.format.map(|f| match f {
                    Format::Oci => SourceKind::OciLayout,
                    Format::Docker => SourceKind::DockerArchive,
                    Format::Tar => SourceKind::Tarball,
                    Format::Dir => SourceKind::Directory,
                }),
                tag: args.tag,
                limits: Some(ImportLimits {
                    max_total_bytes: args.max_bytes.unwrap_or(defaults.max_total_bytes),
                    max_file_bytes: args.max_file_bytes.unwrap_or(defaults.max_file_bytes),
                    max_entries: args.max_entries.unwrap_or(defaults.max_entries),
                    allow_devices: !args.no_devices,
                }),
            };
            let spinner = out.spinner(&format!("importing {}", args.source.display()));
            let report: ImportReport = client.call(Op::ImageImport(request)).inspect_err(|_| {
                spinner.finish_and_clear();
            })?;
            spinner.finish_and_clear();
            out.print(&report, || report.image.tree.clone())?;
            let layers = match report.image.layers.len() {
                0 => String::new(),
                1 => " in 1 layer".to_string(),
                n => format!(" in {n} layers"),
            };
            out.note(&format!(
                "image '{}': {} files, {} ({} new){layers}, {}",
                report.image.name,
                report.image.files,
                human_bytes(report.image.file_bytes),
                human_bytes(report.new_bytes),
                crate::output::human_duration(report.seconds)
            ));
        }
        ImageCommand::Ls => {
            let images: Vec<ImageInfo> = client.call(Op::ImageList)?;
            out.print(&images, || {
                images
                    .iter()
                    .map(|i| {
                        format!(
                            "{}\t{}\t{} files\t{}\t{}",
                            i.name,
                            &i.tree[..16.min(i.tree.len())],
                            i.files,
                            human_bytes(i.file_bytes),
                            serde_json::to_value(i.kind)
                                .ok()
                                .and_then(|v| v.as_str().map(String::from))
                                .unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        ImageCommand::Show { name } => {
            let image: ImageInfo = client.call(Op::ImageShow { name })?;
            out.print(&image, || {
                serde_json::to_string_pretty(&image).unwrap_or_default()
            })?;
        }
        ImageCommand::Rm { name } => {
            let removed: serde_json::Value = client.call(Op::ImageRemove { name: name.clone() })?;
            out.print(&removed, || format!("removed image '{name}'"))?;
        }
        ImageCommand::Export { name, out: target } => {
            if target.as_os_str() == "-" {
                if out.json() {
                    bail!("--json and output to stdout cannot be combined; give a file name");
                }
                let mut stdout = BufWriter::new(std::io::stdout().lock());
                let _: ExportStats = client.call_streaming(
                    Op::ImageExport {
                        name,
                        to: ExportTarget::Stream,
                    },
                    &mut stdout,
                )?;
            } else {
                let path = client::absolute(&target)?;
                let stats: ExportStats = client.call(Op::ImageExport {
                    name,
                    to: ExportTarget::File(path),
                })?;
                out.print(&stats, || {
                    format!(
                        "exported {} entries, {}",
                        stats.entries,
                        human_bytes(stats.file_bytes)
                    )
                })?;
            }
        }
    }
    Ok(exit::code(exit::OK))
}

/// `snapctl mount`.
#[derive(Args, Debug)]
pub struct MountArgs {
    /// Image to mount.
    #[arg(
        long,
        required_unless_present = "snapshot",
        conflicts_with = "snapshot"
    )]
    image: Option<String>,
    /// Snapshot to mount (restore, or one fork).
    #[arg(long)]
    snapshot: Option<String>,
    /// Place the snapshot inside this live mount (mount point or id), at
    /// path DIR of that mount, instead of making a new mount.
    #[arg(long, requires = "snapshot")]
    into: Option<String>,
    /// Mount point (an existing directory); with --into, the path inside
    /// that mount.
    #[arg(required_unless_present = "no_fuse")]
    dir: Option<PathBuf>,
    /// No FUSE mount: the mount is served over 9P alone (`snapctl serve9p
    /// ID`), as a VM sandbox's root or volume needs.
    #[arg(long, conflicts_with_all = ["dir", "into"])]
    no_fuse: bool,
    /// Size quota of the upper layer (e.g. 10G).
    #[arg(long, value_parser = parse_size, default_value = "10G")]
    quota: u64,
    /// Most inodes the sandbox may make (files, directories, links…);
    /// past it, ENOSPC.
    #[arg(long, default_value_t = layerfs::cowfs::DEFAULT_INODE_QUOTA,
          value_parser = clap::value_parser!(u64).range(1..))]
    inodes: u64,
    /// FUSE request threads.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
}

/// `snapctl mount`: the daemon mounts the image and serves it; prints the
/// mount id.
pub fn mount(args: MountArgs, home: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(home)?;
    if let Some(into) = args.into {
        let key = match std::fs::canonicalize(&into) {
            Ok(path) if into.contains('/') || Path::new(&into).is_dir() => {
                path.display().to_string()
            }
            _ => into,
        };
        let snapshot = args.snapshot.unwrap_or_default();
        let path = args.dir.unwrap_or_default().display().to_string();
        let info: MountInfo = client.call(Op::MountGraft {
            mount: key,
            snapshot: snapshot.clone(),
            path: path.clone(),
        })?;
        out.print(&info, || info.id.clone())?;
        out.note(&format!(
            "placed snapshot {snapshot} at {path} in mount {} ({})",
            info.id,
            info.place()
        ));
        return Ok(exit::code(exit::OK));
    }
    let mountpoint = match &args.dir {
        Some(dir) => Some(
            std::fs::canonicalize(dir).with_context(|| format!("mount point {}", dir.display()))?,
        ),
        None => None,
    };
    let info: MountInfo = client.call(Op::MountCreate(api::MountCreate {
        image: args.image.unwrap_or_default(),
        snapshot: args.snapshot,
        mountpoint,
        quota_bytes: args.quota,
        inode_quota: Some(args.inodes),
        threads: Some(usize::from(args.threads)),
    }))?;
    out.print(&info, || info.id.clone())?;
    let what = match &info.snapshot {
        Some(id) => format!("snapshot {id}"),
        None => format!("image '{}'", info.image),
    };
    match &info.mountpoint {
        Some(path) => out.note(&format!(
            "mounted {what} on {} (mount {}); `snapctl umount {}` ends it",
            path.display(),
            info.id,
            path.display()
        )),
        None => out.note(&format!(
            "made mount {} of {what} without FUSE; `snapctl serve9p {} --listen ...` serves it, \
             `snapctl umount {}` ends it",
            info.id, info.id, info.id
        )),
    }
    Ok(exit::code(exit::OK))
}

/// `snapctl mount ls`-style listing: `snapctl mounts`.
pub fn list_mounts(home: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(home)?;
    let mounts: Vec<MountInfo> = client.call(Op::MountList)?;
    out.print(&mounts, || {
        mounts
            .iter()
            .map(|m| {
                format!(
                    "{}\t{}\t{}\t{} of {}",
                    m.id,
                    m.image,
                    m.place(),
                    human_bytes(m.used_bytes),
                    human_bytes(m.quota_bytes)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    Ok(exit::code(exit::OK))
}

/// `snapctl umount MOUNT`: MOUNT is a mount point or a mount id. The
/// mount's upper layer is discarded.
pub fn umount(target: &str, home: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    let mut client = Client::connect(home)?;
    // A path is resolved here: the daemon does not share our directory.
    let key = match std::fs::canonicalize(target) {
        Ok(path) if target.contains('/') || Path::new(target).is_dir() => {
            path.display().to_string()
        }
        _ => target.to_string(),
    };
    let info: MountInfo = client.call(Op::MountRemove { mount: key })?;
    out.print(&info, || {
        format!("unmounted {} (mount {})", info.place(), info.id)
    })?;
    Ok(exit::code(exit::OK))
}
