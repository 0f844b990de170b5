//! The artifact: round trip, the safetensors layout, and damage detection naming the section.

use crate::common::*;
use std::collections::BTreeMap;
use std::path::Path;
use vecbuild::artifact::container::{self, DType, TensorOut};
use vecbuild::{Error, Ids, Searcher};

fn build(dir: &Path, n: usize, dim: usize, extra: &[&str]) -> Vec<f32> {
    let d = data(n, dim, 9);
    let names: Vec<String> = (0..n).map(|i| format!("row/{i}")).collect();
    write_parquet(
        &dir.join("a.parquet"),
        vec![
            ("id", strings(&names)),
            ("emb", fsl_f32(&d, dim, "item", &[])),
        ],
        64,
    );
    let mut args = vec!["build", "--input", "a.parquet", "--out", "a.vbx"];
    args.extend_from_slice(extra);
    ok(dir, &args);
    d
}

fn open_err(path: &Path) -> String {
    match Searcher::open(path) {
        Ok(_) => panic!("damaged artifact opened"),
        Err(e) => {
            assert!(e.is_user_error(), "damage is a user-facing error: {e}");
            e.to_string()
        }
    }
}

#[test]
fn round_trip_keeps_vectors_ids_and_manifest() {
    let dir = tmp();
    let d = build(dir.path(), 300, 12, &["--metric", "ip"]);
    let s = Searcher::open(dir.path().join("a.vbx")).expect("open");
    let m = s.manifest();
    assert_eq!(
        (m.count, m.dim, m.metric.name(), m.kind.to_string()),
        (300, 12, "ip", "flat".to_string())
    );
    assert_eq!(m.inputs.len(), 1);
    assert_eq!(m.inputs[0].rows, 300);
    assert_eq!(m.vecbuild_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(s.vectors().unwrap().as_slice().unwrap(), &d[..]);
    let names: Vec<String> = (0..300).map(|i| format!("row/{i}")).collect();
    assert_eq!(s.ids().take(0..300), Ids::from_strings(&names));
}

#[test]
fn layout_is_safetensors_with_aligned_tensors() {
    let dir = tmp();
    build(dir.path(), 101, 5, &[]);
    let bytes = std::fs::read(dir.path().join("a.vbx")).unwrap();
    let h = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!((8 + h) % 64, 0, "data starts 64-byte aligned");
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + h]).expect("JSON header");
    let obj = header.as_object().unwrap();
    assert_eq!(obj["__metadata__"]["format"], "vecbuild");
    let mut spans: Vec<(u64, u64, u64)> = obj
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, t)| {
            let o = t["data_offsets"].as_array().unwrap();
            let size = match t["dtype"].as_str().unwrap() {
                "F32" | "U32" => 4,
                "I64" | "U64" => 8,
                _ => 1,
            };
            (o[0].as_u64().unwrap(), o[1].as_u64().unwrap(), size)
        })
        .collect();
    spans.sort();
    let mut at = 0;
    for (b, e, size) in spans {
        assert_eq!(b, at, "tensors are back to back");
        assert_eq!(
            (8 + h as u64 + b) % size,
            0,
            "tensor aligned to its element size"
        );
        at = e;
    }
    assert_eq!(
        8 + h as u64 + at,
        bytes.len() as u64,
        "tensors fill the file"
    );
    for name in ["vectors", "sq_norms", "ids.offsets", "ids.data"] {
        assert!(obj.contains_key(name), "tensor {name}");
    }
}

#[test]
fn a_flipped_byte_in_a_tensor_names_that_tensor() {
    let dir = tmp();
    build(dir.path(), 200, 8, &[]);
    let p = dir.path().join("a.vbx");
    let s = Searcher::open(&p).unwrap();
    drop(s);
    let bytes = std::fs::read(&p).unwrap();
    let h = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + h]).unwrap();
    for name in ["vectors", "ids.data"] {
        let start = header[name]["data_offsets"][0].as_u64().unwrap() as usize + 8 + h;
        let mut bad = bytes.clone();
        bad[start + 17] ^= 0x04;
        let q = dir.path().join(format!("bad-{name}.vbx"));
        std::fs::write(&q, &bad).unwrap();
        let msg = open_err(&q);
        assert!(
            msg.contains(&format!("section `{name}`")) && msg.contains("checksum mismatch"),
            "{msg}"
        );
        let out = run(dir.path(), &["info", q.to_str().unwrap()]);
        assert_eq!(out.code, 2, "{}", out.stderr);
    }
}

#[test]
fn a_flipped_byte_in_the_header_is_caught() {
    let dir = tmp();
    build(dir.path(), 50, 4, &[]);
    let p = dir.path().join("a.vbx");
    let mut bytes = std::fs::read(&p).unwrap();
    let h = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let text = String::from_utf8(bytes[8..8 + h].to_vec()).unwrap();
    // Change the manifest's row count from 50 to 59 without breaking the JSON.
    let at = text.find(r#"\"count\":50"#).expect("count in manifest") + r#"\"count\":5"#.len();
    bytes[8 + at] = b'9';
    std::fs::write(&p, &bytes).unwrap();
    let msg = open_err(&p);
    assert!(
        msg.contains("section `manifest`") && msg.contains("checksum mismatch"),
        "{msg}"
    );
    // A byte that breaks the JSON.
    bytes[8 + 1] = 0xff;
    std::fs::write(&p, &bytes).unwrap();
    let msg = open_err(&p);
    assert!(msg.contains("section `header`"), "{msg}");
}

#[test]
fn a_truncated_file_names_the_section_cut_off() {
    let dir = tmp();
    build(dir.path(), 100, 8, &[]);
    let p = dir.path().join("a.vbx");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    let msg = open_err(&p);
    assert!(
        msg.contains("truncated") && msg.contains("section `"),
        "{msg}"
    );
    std::fs::write(&p, &bytes[..5]).unwrap();
    assert!(open_err(&p).contains("too short"));
}

#[test]
fn a_newer_format_version_is_refused() {
    let dir = tmp();
    let p = dir.path().join("new.vbx");
    let manifest = r#"{"format_version":99,"kind":"flat"}"#.to_string();
    let mut meta = BTreeMap::new();
    meta.insert(
        "vecbuild.manifest_xxh3".to_string(),
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(manifest.as_bytes())),
    );
    meta.insert("vecbuild.manifest".to_string(), manifest);
    container::write(
        &p,
        &meta,
        &[TensorOut::new("ids", DType::I64, vec![1], &[0i64])],
    )
    .unwrap();
    let msg = open_err(&p);
    assert!(msg.contains("format version 99 is newer"), "{msg}");
}

#[test]
fn unknown_files_are_not_artifacts() {
    let dir = tmp();
    let p = dir.path().join("x.vbx");
    std::fs::write(&p, b"\x10\0\0\0\0\0\0\0{\"a\":1}         ").unwrap();
    assert!(matches!(Searcher::open(&p), Err(Error::Artifact { .. })));
}

#[test]
fn every_tensor_starts_on_a_cache_line_and_padding_stays_out_of_sight() {
    let dir = tmp();
    let p = dir.path().join("pad.vbx");
    let (a, b, c) = ([1u32, 2, 3], [7u8; 5], [0.5f32; 33]);
    container::write(
        &p,
        &BTreeMap::new(),
        &[
            TensorOut::new("a", DType::U32, vec![3], &a),
            TensorOut::new("b", DType::U8, vec![5], &b),
            TensorOut::new("c", DType::F32, vec![33], &c),
        ],
    )
    .unwrap();
    let opened = container::Container::open(&p).unwrap();
    let names: Vec<&str> = opened.tensors.keys().map(|s| s.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    for t in opened.tensors.values() {
        assert_eq!(t.range.start % 64, 0, "{t:?}");
    }
    assert_eq!(opened.slice::<u32>("a", DType::U32).unwrap().0, a);
    assert_eq!(opened.slice::<u8>("b", DType::U8).unwrap().0, b);
    assert_eq!(opened.slice::<f32>("c", DType::F32).unwrap().0, c);
    // The file is still safetensors-shaped: tensors and padding cover the data with no hole.
    let bytes = std::fs::read(&p).unwrap();
    let h = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + h]).unwrap();
    let mut spans: Vec<(u64, u64)> = header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, v)| {
            (
                v["data_offsets"][0].as_u64().unwrap(),
                v["data_offsets"][1].as_u64().unwrap(),
            )
        })
        .collect();
    spans.sort();
    assert_eq!(spans[0].0, 0);
    assert!(spans.windows(2).all(|w| w[0].1 == w[1].0), "{spans:?}");
    assert_eq!(spans.last().unwrap().1 as usize, bytes.len() - 8 - h);
}
