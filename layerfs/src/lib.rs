//! `layerfs`: Strata's filesystem layer.
//!
//! A filesystem state is a **tree**: directory nodes stored in `cas`,
//! canonically encoded, so a tree id names a whole filesystem and identical
//! subtrees are stored once (`FORMAT.md` has the layout). Images are named
//! trees imported from what users have — OCI image layouts, `docker save`
//! archives, root-filesystem tarballs and directories — with every check a
//! hostile archive calls for, and exported back to tar such that importing
//! the export gives the same tree id.
//!
//! The parts:
//! - [`tree`]: the node format (entries, attributes, pages of large
//!   directories).
//! - [`memtree`]: an in-memory tree that importers build and layers apply
//!   to, with the path rules (no `..`, no absolute paths, nothing through a
//!   symlink); storing and loading trees.
//! - [`import`]: tar streams (plain or as image layers with whiteouts),
//!   OCI layouts and docker archives, directories.
//! - [`image`]: the image catalog (`image/NAME` refs).
//! - [`export`]: trees back to tar.
//! - [`cowfs`]: the filesystem core — inode operations over a lower tree
//!   and a writable upper layer, with chunk-granular copy-up and a quota.
//! - [`fuse`]: the FUSE frontend over [`cowfs`].
//! - [`diff`]: what differs between two trees, by comparing ids.
//! - [`edit`]: reading and changing one path of a stored tree.
//! - [`merge`]: three-way merge of trees, with conflict copies (volumes
//!   commit with it).

pub mod content;
pub mod cowfs;
pub mod diff;
pub mod edit;
pub mod error;
pub mod export;
pub mod fuse;
#[doc(hidden)]
pub mod fuzzing;
pub mod image;
pub mod import;
pub mod memtree;
pub mod merge;
pub mod tree;

pub use diff::{bytes_delta, diff_trees, tree_bytes, BytesDelta, Change, DiffEntry};
pub use error::{Error, Result};
pub use export::{export_tar, ExportStats};
pub use image::{
    get_image, image_tree, import_image, list_images, remove_image, ImageInfo, ImportOptions,
    ImportReport,
};
pub use import::{ImportLimits, SourceKind};
pub use memtree::{MemTree, TreeReader};
pub use merge::{merge_trees, Conflict, ConflictKind, Merged};
