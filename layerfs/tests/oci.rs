//! OCI image layouts and docker archives: layers applied in order with
//! whiteouts and opaque directories, digests verified, shared base layers
//! shared as trees.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;

use common::{listing, store};
use layerfs::{get_image, import_image, Error, ImportOptions, SourceKind};
use serde_json::json;
use sha2::{Digest, Sha256};

/// A tar of (path, content) entries; content `None` makes a directory, and
/// `Some(b"->target")` a hard link.
fn layer_tar(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mode(0o644);
        header.set_mtime(1_000);
        match content {
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, path, &[][..]).unwrap();
            }
            Some(data) if data.starts_with(b"->") => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_size(0);
                let target = std::str::from_utf8(&data[2..]).unwrap();
                builder.append_link(&mut header, path, target).unwrap();
            }
            Some(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, *data).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// Writes a blob into an OCI layout; returns its descriptor.
fn put_blob(layout: &Path, media_type: &str, data: &[u8]) -> serde_json::Value {
    let d = digest(data);
    let dir = layout.join("blobs/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(d.strip_prefix("sha256:").unwrap()), data).unwrap();
    json!({"mediaType": media_type, "digest": d, "size": data.len()})
}

/// Writes an OCI layout whose image has `layers` (media type, bytes).
fn write_layout(layout: &Path, layers: &[(&str, Vec<u8>)]) {
    fs::create_dir_all(layout).unwrap();
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let config = json!({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]}});
    let config = put_blob(
        layout,
        "application/vnd.oci.image.config.v1+json",
        &serde_json::to_vec(&config).unwrap(),
    );
    let layer_descriptors: Vec<_> = layers
        .iter()
        .map(|(t, data)| put_blob(layout, t, data))
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": layer_descriptors,
    });
    let manifest = put_blob(
        layout,
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    let index = json!({"schemaVersion": 2, "manifests": [manifest]});
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

fn base_layer() -> Vec<u8> {
    layer_tar(&[
        ("etc", None),
        ("etc/conf", Some(b"v1")),
        ("base", None),
        ("base/a", Some(b"a")),
        ("base/b", Some(b"b")),
        ("base/sub", None),
        ("base/sub/x", Some(b"x")),
        ("base/sub/y", Some(b"y")),
    ])
}

fn upper_layers() -> (Vec<u8>, Vec<u8>) {
    let second = layer_tar(&[
        ("base/.wh.a", Some(b"")),
        // The opaque marker comes after a file this layer adds beside it:
        // the marker hides only what lower layers put there.
        ("base/sub/z", Some(b"z")),
        ("base/sub/.wh..wh..opq", Some(b"")),
        ("etc/conf", Some(b"v2")),
        ("base/.wh.never-existed", Some(b"")),
    ]);
    let third = layer_tar(&[("new", Some(b"n")), ("base/b-link", Some(b"->base/b"))]);
    (second, third)
}

const EXPECTED: &[(&str, &str)] = &[
    ("/base", "dir"),
    ("/base/b", "file b"),
    ("/base/b-link", "link to base/b"),
    ("/base/sub", "dir"),
    ("/base/sub/z", "file z"),
    ("/etc", "dir"),
    ("/etc/conf", "file v2"),
    ("/new", "file n"),
];

fn expected() -> Vec<(String, String)> {
    EXPECTED
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn layers_apply_in_order_with_whiteouts_and_every_compression() {
    let (tmp, store) = store();
    let layout = tmp.path().join("layout");
    let (second, third) = upper_layers();
    write_layout(
        &layout,
        &[
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                gzip(&base_layer()),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                zstd::encode_all(&second[..], 3).unwrap(),
            ),
            ("application/vnd.oci.image.layer.v1.tar", third),
        ],
    );
    assert_eq!(SourceKind::detect(&layout).unwrap(), SourceKind::OciLayout);
    let report = import_image(&store, "app", &layout, &ImportOptions::default()).unwrap();
    assert_eq!(report.image.layers.len(), 3);
    assert_eq!(report.image.layers[1].whiteouts, 3);
    assert_eq!(
        listing(&store, report.image.tree.parse().unwrap()),
        expected()
    );
    // The base layer's own tree still holds what later layers removed.
    let base_tree = report.image.layers[0].tree.parse().unwrap();
    assert!(listing(&store, base_tree).contains(&("/base/a".into(), "file a".into())));
    assert_eq!(
        report.image.config.as_ref().unwrap()["config"]["Cmd"][0],
        "/bin/sh"
    );
    assert_eq!(get_image(&store, "app").unwrap().tree, report.image.tree);

    // A second image on the same base layer shares its tree and its chunks.
    let other = tmp.path().join("other");
    write_layout(
        &other,
        &[
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                gzip(&base_layer()),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar",
                layer_tar(&[("other", Some(b"o"))]),
            ),
        ],
    );
    let before = store.stats().unwrap().data_chunks;
    let second_image = import_image(&store, "other", &other, &ImportOptions::default()).unwrap();
    assert_eq!(
        second_image.image.layers[0].tree,
        report.image.layers[0].tree
    );
    assert_eq!(
        store.stats().unwrap().data_chunks,
        before + 1,
        "only the new file's chunk is added"
    );
}

#[test]
fn a_layer_that_does_not_match_its_digest_is_refused() {
    let (tmp, store) = store();
    let layout = tmp.path().join("layout");
    write_layout(
        &layout,
        &[("application/vnd.oci.image.layer.v1.tar", base_layer())],
    );
    // Flip a byte of the layer's content (keeping its name).
    let layer_digest = digest(&base_layer());
    let path = layout
        .join("blobs/sha256")
        .join(layer_digest.strip_prefix("sha256:").unwrap());
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.windows(2).position(|w| w == b"v1").unwrap();
    bytes[at + 1] = b'9';
    fs::write(&path, bytes).unwrap();
    let err = import_image(&store, "bad", &layout, &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, Error::BadImage { .. }), "{err}");
    assert!(err.to_string().contains("but the manifest says"), "{err}");
    assert!(layerfs::list_images(&store).unwrap().is_empty());
    // A layer blob that is missing altogether.
    fs::remove_file(&path).unwrap();
    let err = import_image(&store, "bad", &layout, &ImportOptions::default()).unwrap_err();
    assert!(err.to_string().contains("cannot be opened"), "{err}");
}

#[test]
fn a_docker_save_archive_gives_the_same_tree_as_the_oci_layout() {
    let (tmp, store) = store();
    let (second, third) = upper_layers();
    let layers = [base_layer(), second, third];
    let mut builder = tar::Builder::new(Vec::new());
    let mut names = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let name = format!("layer{i}/layer.tar");
        let mut header = tar::Header::new_gnu();
        header.set_size(layer.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, &name, &layer[..]).unwrap();
        names.push(name);
    }
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let manifest = json!([{"Config": "config.json", "RepoTags": ["app:latest"], "Layers": names}]);
    for (name, data) in [
        ("config.json", config.to_vec()),
        ("manifest.json", serde_json::to_vec(&manifest).unwrap()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, name, &data[..]).unwrap();
    }
    let archive = tmp.path().join("saved.tar");
    fs::write(&archive, builder.into_inner().unwrap()).unwrap();
    assert_eq!(
        SourceKind::detect(&archive).unwrap(),
        SourceKind::DockerArchive
    );

    let report = import_image(&store, "saved", &archive, &ImportOptions::default()).unwrap();
    assert_eq!(report.image.kind, SourceKind::DockerArchive);
    assert_eq!(
        listing(&store, report.image.tree.parse().unwrap()),
        expected()
    );

    let layout = tmp.path().join("layout");
    write_layout(
        &layout,
        &layers
            .iter()
            .map(|l| ("application/vnd.oci.image.layer.v1.tar+gzip", gzip(l)))
            .collect::<Vec<_>>(),
    );
    let oci = import_image(&store, "oci", &layout, &ImportOptions::default()).unwrap();
    assert_eq!(
        oci.image.tree, report.image.tree,
        "same layers, same tree, whatever the packaging"
    );
    // The scratch space of the docker import is gone.
    let leftovers: Vec<_> = fs::read_dir(store.home())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("import-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn image_names_are_checked_and_not_reused() {
    let (tmp, store) = store();
    let layout = tmp.path().join("layout");
    write_layout(
        &layout,
        &[("application/vnd.oci.image.layer.v1.tar", base_layer())],
    );
    import_image(&store, "app", &layout, &ImportOptions::default()).unwrap();
    let err = import_image(&store, "app", &layout, &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, Error::ImageExists { .. }), "{err}");
    for bad in ["", "a/b", "../x"] {
        assert!(
            import_image(&store, bad, &layout, &ImportOptions::default()).is_err(),
            "{bad:?}"
        );
    }
    layerfs::remove_image(&store, "app").unwrap();
    assert!(matches!(
        layerfs::remove_image(&store, "app").unwrap_err(),
        Error::ImageNotFound { .. }
    ));
    assert!(matches!(
        get_image(&store, "app").unwrap_err(),
        Error::ImageNotFound { .. }
    ));
}
