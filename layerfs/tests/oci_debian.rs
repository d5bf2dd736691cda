//! A real OCI image: the Debian fixture turned into a two-layer OCI layout
//! by umoci (`fixtures/oci-debian.sh`, run by `./test.sh`). Importing it
//! gives exactly the tree umoci itself unpacks, and the base layer's tree
//! equals the image of the plain debootstrap tree's content.

mod common;

use std::path::Path;

use common::{listing, store};
use layerfs::{import_image, ImportOptions, SourceKind};

#[test]
fn a_umoci_built_debian_image_imports_to_what_umoci_unpacks() {
    let cache =
        std::env::var("STRATA_FIXTURES").unwrap_or_else(|_| "/var/cache/strata-fixtures".into());
    let layout = Path::new(&cache).join("oci-bookworm-minbase");
    if !fixtures::require::path(
        &Path::new(&cache).join("oci-bookworm-minbase.complete"),
        "`fixtures/oci-debian.sh bookworm-minbase` (./test.sh runs it)",
    ) {
        return;
    }
    let (_tmp, store) = store();
    let report = import_image(&store, "debian-oci", &layout, &ImportOptions::default()).unwrap();
    assert_eq!(report.image.kind, SourceKind::OciLayout);
    assert_eq!(report.image.layers.len(), 2);
    assert!(
        report.image.layers[1].whiteouts >= 2,
        "{:?}",
        report.image.layers[1]
    );
    assert!(report.image.files > 3000, "{} files", report.image.files);

    let unpacked = Path::new(&cache).join("oci-bookworm-minbase.rootfs");
    let options = ImportOptions {
        kind: Some(SourceKind::Directory),
        ..ImportOptions::default()
    };
    let reference = import_image(&store, "unpacked", &unpacked, &options).unwrap();
    let image_listing = listing(&store, report.image.tree.parse().unwrap());
    assert_eq!(
        image_listing,
        listing(&store, reference.image.tree.parse().unwrap())
    );
    assert!(image_listing
        .iter()
        .any(|(p, what)| p == "/opt/strata/layer2.txt" && what == "file added by layer 2\n"));
    assert!(!image_listing
        .iter()
        .any(|(p, _)| p.starts_with("/usr/share/doc/")));

    // The first layer alone still has the documentation the second removed.
    let base = listing(&store, report.image.layers[0].tree.parse().unwrap());
    assert!(base.iter().any(|(p, _)| p.starts_with("/usr/share/doc/")));
}
