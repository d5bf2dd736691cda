//! `snapctl image import|ls|show|rm|export` and `snapctl mount|umount`.
//!
//! Until the node daemon lands (it will own the store and every mount),
//! these open the store themselves, and `snapctl mount` serves the mount in
//! the foreground until it is unmounted.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use layerfs::cowfs::{CowFs, MountConfig};
use layerfs::fuse::{mount, FuseOptions};
use layerfs::{ImportLimits, ImportOptions, SourceKind};

use crate::exit;
use crate::output::{human_bytes, parse_size, Output};
use crate::store_cmd::open;

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
    let store = open(home)?;
    match cmd {
        ImageCommand::Import(args) => {
            let defaults = ImportLimits::default();
            let options = ImportOptions {
                limits: ImportLimits {
                    max_total_bytes: args.max_bytes.unwrap_or(defaults.max_total_bytes),
                    max_file_bytes: args.max_file_bytes.unwrap_or(defaults.max_file_bytes),
                    max_entries: args.max_entries.unwrap_or(defaults.max_entries),
                    allow_devices: !args.no_devices,
                },
                tag: args.tag,
                kind: args.format.map(|f| match f {
                    Format::Oci => SourceKind::OciLayout,
                    Format::Docker => SourceKind::DockerArchive,
                    Format::Tar => SourceKind::Tarball,
                    Format::Dir => SourceKind::Directory,
                }),
            };
            let spinner = out.spinner(&format!("importing {}", args.source.display()));
            let report = layerfs::import_image(&store, &args.name, &args.source, &options)
                .with_context(|| {
                    format!(
                        "importing {} as image '{}'",
                        args.source.display(),
                        args.name
                    )
                });
            spinner.finish_and_clear();
            let report = report?;
            out.print(&report, || report.image.tree.clone())?;
            out.note(&format!(
                "image '{}': {} files, {} ({} new) in {} layers, {:.2}s",
                report.image.name,
                report.image.files,
                human_bytes(report.image.file_bytes),
                human_bytes(report.new_bytes),
                report.image.layers.len(),
                report.seconds
            ));
        }
        ImageCommand::Ls => {
            let images = layerfs::list_images(&store)?;
            out.print(&images, || {
                images
                    .iter()
                    .map(|i| {
                        format!(
                            "{}\t{}\t{} files\t{}\t{}",
                            i.name,
                            &i.tree[..16],
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
            let image = layerfs::get_image(&store, &name)?;
            out.print(&image, || {
                serde_json::to_string_pretty(&image).unwrap_or_default()
            })?;
        }
        ImageCommand::Rm { name } => {
            layerfs::remove_image(&store, &name)?;
            out.print(&serde_json::json!({ "removed": name }), || {
                format!("removed image '{name}'")
            })?;
        }
        ImageCommand::Export { name, out: target } => {
            let tree = layerfs::image_tree(&store, &name)?;
            let stats = if target.as_os_str() == "-" {
                if out.json() {
                    bail!("--json and output to stdout cannot be combined; give a file name");
                }
                let stdout = std::io::stdout().lock();
                layerfs::export_tar(&store, tree, BufWriter::new(stdout))?
            } else {
                let file = File::create(&target)
                    .with_context(|| format!("creating {}", target.display()))?;
                let mut writer = BufWriter::new(file);
                let stats = layerfs::export_tar(&store, tree, &mut writer)?;
                writer
                    .flush()
                    .with_context(|| format!("writing {}", target.display()))?;
                stats
            };
            if target.as_os_str() != "-" {
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
    #[arg(long)]
    image: String,
    /// Mount point.
    dir: PathBuf,
    /// Directory of the writable upper layer (default: HOME/mounts/<pid>).
    #[arg(long)]
    upper: Option<PathBuf>,
    /// Size quota of the upper layer (e.g. 10G).
    #[arg(long, value_parser = parse_size, default_value = "10G")]
    quota: u64,
    /// FUSE request threads.
    #[arg(long, default_value_t = 4)]
    threads: usize,
}

/// Mounts an image and serves it until the mount point is unmounted.
pub fn mount_foreground(args: MountArgs, home: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    let store = open(home)?;
    let tree = layerfs::image_tree(&store, &args.image)?;
    let upper = args
        .upper
        .unwrap_or_else(|| home.join("mounts").join(std::process::id().to_string()));
    let fs = Arc::new(
        CowFs::new(
            store,
            tree,
            MountConfig {
                upper_dir: upper.clone(),
                quota_bytes: args.quota,
            },
        )
        .with_context(|| format!("preparing the upper layer in {}", upper.display()))?,
    );
    let options = FuseOptions {
        threads: args.threads,
        ..FuseOptions::default()
    };
    let session = mount(fs, &args.dir, &options).with_context(|| {
        format!(
            "mounting on {} (is FUSE available and the directory empty?)",
            args.dir.display()
        )
    })?;
    out.print(
        &serde_json::json!({ "mounted": args.dir, "image": args.image, "tree": tree, "upper": upper }),
        || format!("mounted image '{}' on {}; `snapctl umount {}` ends it", args.image, args.dir.display(), args.dir.display()),
    )?;
    session.join().context("serving the mount")?;
    Ok(exit::code(exit::OK))
}

/// `snapctl umount DIR`.
pub fn umount(dir: &Path, out: &Output) -> anyhow::Result<ExitCode> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .context("mount point path contains a NUL byte")?;
    // SAFETY: `c` is a valid NUL-terminated path; umount2 touches no memory of ours.
    let rc = unsafe { libc::umount2(c.as_ptr(), 0) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(err).with_context(|| format!("unmounting {}", dir.display()));
    }
    out.print(&serde_json::json!({ "unmounted": dir }), || {
        format!("unmounted {}", dir.display())
    })?;
    Ok(exit::code(exit::OK))
}
