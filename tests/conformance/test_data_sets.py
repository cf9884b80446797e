"""Newer suite (run.go GenerateData + TestAll): ping, empty repository, every data set, manifest errors.

Each data set gets a fresh repository and runs, in order: push (blobs with POST+PUT, manifests by
digest in dependency order, then tags), tag-list, head, pull, referrers, delete (tags, then
manifests in reverse order, then blobs; each delete must be visible at once: HEAD -> 404).
Manifest PUTs are sent with ``Transfer-Encoding: chunked`` because that is what the Go client does.
"""

from __future__ import annotations

import secrets

import pytest

from .helpers import (
    MT_EXAMPLE_CONF1,
    MT_EXAMPLE_CONF2,
    MT_OCI_EMPTY_JSON,
    MT_OCI_IMAGE,
    MT_OCI_LAYER_ND,
    MT_OCI_LAYER_ND_GZ,
    MT_OCI_LAYER_PRE,
    MT_OCTET,
    SPARSE,
    TAG_PARAM,
    Check,
    TestData,
    Unsupported,
    blob_delete,
    blob_get_exists_full,
    blob_head_exists,
    blob_head_req,
    blob_post_put,
    digest_of,
    expect_status,
    header_values,
    manifest_delete,
    manifest_get_exists,
    manifest_get_req,
    manifest_head_exists,
    manifest_head_req,
    manifest_put,
    rand_text,
    ref_matches,
    referrers_list,
    tag_list,
)

AMD64 = {"architecture": "amd64", "os": "linux"}
ARM64 = {"architecture": "arm64", "os": "linux"}
HELLO = {"org.opencontainers.conformance": "hello conformance test"}
ARTIFACT = dict(config_media_type=MT_OCI_EMPTY_JSON, config_bytes=b"{}", layer_count=1)


# ----------------------------------------------------------------------------- data sets (run.go)
def ds_image():
    td = TestData("Image")
    td.gen_manifest_full(tag="image")
    return td


def ds_image_uncompressed():
    td = TestData("Image Uncompressed")
    td.gen_manifest_full(tag="image-uncompressed", comp="none")
    return td


def ds_large_manifest():
    td = TestData("Image with Large Manifest")
    ann = {f"large-annotation-{i}": "A" * 10000 for i in range(390)}
    td.gen_manifest_full(tag="large-manifest", annotations=ann)
    return td


def ds_index():
    td = TestData("Index")
    td.gen_index_full(tag="index", platforms=[AMD64, ARM64])
    return td


def ds_nested_index():
    td = TestData("Nested Index")
    d1 = td.gen_index_full(platforms=[AMD64, ARM64])
    d2 = td.gen_index_full(platforms=[AMD64, ARM64])
    td.gen_index([None, None], [d1, d2], tag="index-of-index")
    return td


def ds_empty_index():
    td = TestData("Empty Index")
    td.gen_index_full(tag="index", platforms=[])
    return td


def ds_artifact():
    td = TestData("Artifact")
    td.gen_manifest_full(
        tag="artifact", artifact_type=MT_EXAMPLE_CONF1, layer_media_type=MT_EXAMPLE_CONF1, **ARTIFACT
    )
    return td


def ds_artifact_index():
    td = TestData("Artifact Index")
    td.gen_index_full(
        tag="artifact-index",
        platforms=[AMD64, ARM64],
        artifact_type=MT_EXAMPLE_CONF1,
        layer_media_type=MT_EXAMPLE_CONF1,
        **ARTIFACT,
    )
    return td


def ds_artifact_without_layers():
    td = TestData("Artifact without Layers")
    td.gen_manifest_full(
        tag="artifact-without-layers",
        artifact_type=MT_EXAMPLE_CONF1,
        layer_bytes=b"{}",
        layer_media_type=MT_OCI_EMPTY_JSON,
        **ARTIFACT,
    )
    return td


def ds_artifacts_with_subject():
    td = TestData("Artifacts with Subject")
    subj = td.gen_manifest_full(tag="image")
    subj_desc = dict(td.desc[subj])
    td.gen_manifest_full(subject=subj_desc)
    td.gen_manifest_full(
        artifact_type=MT_EXAMPLE_CONF1,
        annotations=HELLO,
        annotation_uniq=True,
        layer_media_type=MT_EXAMPLE_CONF1,
        subject=subj_desc,
        tag="tagged-artifact1",
        **ARTIFACT,
    )
    td.gen_manifest_full(
        artifact_type=MT_EXAMPLE_CONF2,
        annotations=HELLO,
        annotation_uniq=True,
        layer_media_type=MT_OCTET,
        subject=subj_desc,
        tag="tagged-artifact2",
        **ARTIFACT,
    )
    return td


def ds_index_with_subject():
    td = TestData("Index with Subject")
    subj = td.gen_index_full(tag="index")
    subj_desc = dict(td.desc[subj])
    # the options reach the child manifests too (Go genIndexFull passes them down), so the two
    # child artifacts and the artifact index are all referrers of the subject index
    td.gen_index_full(
        artifact_type=MT_EXAMPLE_CONF1,
        annotations=HELLO,
        annotation_uniq=True,
        layer_media_type=MT_EXAMPLE_CONF1,
        subject=subj_desc,
        tag="tagged-artifact",
        **ARTIFACT,
    )
    return td


def ds_missing_subject():
    td = TestData("Missing Subject")
    subj_desc = {"mediaType": MT_OCI_IMAGE, "digest": digest_of(b"missing content"), "size": 123}
    td.gen_manifest_full(
        artifact_type=MT_EXAMPLE_CONF1,
        annotations=HELLO,
        annotation_uniq=True,
        layer_media_type=MT_EXAMPLE_CONF1,
        subject=subj_desc,
        tag="tagged-artifact",
        **ARTIFACT,
    )
    return td


def ds_data_field():
    td = TestData("Data Field")
    td.gen_manifest_full(tag="data-field", set_data=True)
    return td


def ds_non_distributable_layers():
    td = TestData("Non-distributable Layers")
    conf_digs = [digest_of(secrets.token_bytes(256))]
    dig0 = digest_of(secrets.token_bytes(256))
    dig1 = digest_of(secrets.token_bytes(256))
    conf_digs.append(dig1)
    layers = [
        {
            "mediaType": MT_OCI_LAYER_ND_GZ,
            "digest": dig0,
            "size": 123456,
            "urls": ["https://store.example.com/blobs/sha256/" + dig0.split(":")[1]],
        },
        {
            "mediaType": MT_OCI_LAYER_ND,
            "digest": dig1,
            "size": 12345,
            "urls": ["https://store.example.com/blobs/sha256/" + dig1.split(":")[1]],
        },
    ]
    c_dig, uc_dig, _ = td.gen_layer(1)
    conf_digs.append(uc_dig)
    layers.append(dict(td.desc[c_dig]))
    cfg, _ = td.gen_config(AMD64, conf_digs)
    td.gen_manifest(dict(td.desc[cfg]), layers, tag="non-distributable-image")
    return td


def ds_custom_fields():
    td = TestData("Custom Fields")
    td.gen_index_full(tag="custom-fields", platforms=[AMD64, ARM64], extra_field=True)
    return td


def ds_no_layers():
    td = TestData("No Layers")
    td.gen_manifest_full(tag="no-layers", layer_count=0)
    return td


def ds_sparse():
    td = TestData("Sparse Manifests")
    td.gen_manifest_full(tag="sparse-image")
    for dig in list(td.blobs):
        if td.desc[dig]["mediaType"].startswith(MT_OCI_LAYER_PRE):
            del td.desc[dig], td.blobs[dig]  # remove the first layer found: it is never pushed
            break
    image = td.gen_manifest_full(platform=AMD64)
    rnd = digest_of(secrets.token_bytes(1024))
    td.desc[rnd] = {"mediaType": MT_OCI_IMAGE, "digest": rnd, "size": 1024}
    td.gen_index([AMD64, ARM64], [image, rnd], tag="sparse-index")
    return td


def ds_sha512():
    # "non-canonical digests require tag parameters to push tags, so only test by digest"
    td = TestData("Digest Algorithm sha512")
    td.gen_index_full(algo="sha512")
    return td


def _tag_param(name, **opts):
    td = TestData(name)
    td.gen_index_full(tag=name.lower(), **opts)
    for i, dig in enumerate(td.man_order):
        td.tags[f"{name.lower()}-{i}"] = dig
        td.push_opts[dig] = {"TagParam"}
    return td


def ds_tag_param_sha256():
    return _tag_param("tag-param-sha256")


def ds_tag_param_sha512():
    return _tag_param("tag-param-sha512", algo="sha512")


def ds_bad_digest_image():
    td = TestData("Bad Digest Image")
    dig = td.gen_manifest_full()
    td.pull_opts[dig] = {"SkipPullTest"}
    td.push_opts[dig] = {"ExpectBadDigest"}
    td.manifests[dig] = td.manifests[dig] + b"  "  # whitespace makes the digest mismatch
    return td


DATA_SETS = {
    "image": ds_image,
    "image-uncompressed": ds_image_uncompressed,
    "large-manifest": ds_large_manifest,
    "index": ds_index,
    "nested-index": ds_nested_index,
    "empty-index": ds_empty_index,
    "artifact": ds_artifact,
    "artifact-index": ds_artifact_index,
    "artifact-without-layers": ds_artifact_without_layers,
    "artifacts-with-subject": ds_artifacts_with_subject,
    "index-with-subject": ds_index_with_subject,
    "missing-subject": ds_missing_subject,
    "data-field": ds_data_field,
    "non-distributable-layers": ds_non_distributable_layers,
    "custom-fields": ds_custom_fields,
    "no-layers": ds_no_layers,
    "sparse": ds_sparse,
    "sha512": ds_sha512,
    "tag-param-sha256": ds_tag_param_sha256,
    "tag-param-sha512": ds_tag_param_sha512,
    "bad-digest-image": ds_bad_digest_image,
}


class DataSet:
    def __init__(self, key, td, c, repo):
        self.key, self.td, self.c, self.repo = key, td, c, repo
        self.push_errors: list[str] = []
        self.pushed = False


def _enabled(key: str) -> bool:
    """Data sets that are not generated: "sparse" unless CONFORMANCE_SPARSE=1 (Go config
    Data.Sparse=false), the ?tag= sets unless CONFORMANCE_PROFILE=dev (Go: APIs.Manifests.TagParam)."""
    if key == "sparse":
        return SPARSE
    if key.startswith("tag-param"):
        return TAG_PARAM
    return True


ENABLED_DATA_SETS = [k for k in DATA_SETS if _enabled(k)]
# Only data sets whose manifests have a subject get a referrers test.  The generators are
# deterministic in structure (only the content is random), so this is known at collection time.
REFERRER_DATA_SETS = [k for k in ENABLED_DATA_SETS if DATA_SETS[k]().referrers]


@pytest.fixture(scope="module", params=ENABLED_DATA_SETS)
def ds(request, oci_target):
    key = request.param
    return DataSet(key, DATA_SETS[key](), oci_target.client, oci_target.repo("conformance"))


def need_push(ds):
    if not ds.pushed:
        pytest.skip(f"push of data set {ds.key} did not complete")


# ----------------------------------------------------------------------------- phases
def test_push(ds):
    """<data set>/push: blobs, manifests by digest (OCI-Subject when a subject is set, Location
    serving the exact bytes), then tags (or ?tag= on the digest PUT for the tag-param sets)."""
    c, repo, td = ds.c, ds.repo, ds.td
    check = Check()
    for dig in td.blobs:
        check.step(f"blob {dig}", blob_post_put, c, repo, dig, td)
    for i, dig in enumerate(td.man_order):
        flags = td.push_opts.get(dig, set())

        def put_digest(dig=dig, flags=flags):
            params = None
            expect_tags = []
            if "TagParam" in flags:
                expect_tags = [t for t, d in td.tags.items() if d == dig]
                params = [("tag", t) for t in expect_tags]
            resp = manifest_put(
                c, repo, dig, dig, td, params=params, expect_bad_digest="ExpectBadDigest" in flags
            )
            missing = []
            for t in expect_tags:
                if t in header_values(resp, "OCI-Tag"):
                    td.tag_pushed.add(t)
                else:
                    missing.append(t)
            if missing:
                raise AssertionError(f"header missing OCI-Tag: {missing}")

        check.step(f"manifest {i} {dig}", put_digest)
    for tag, dig in td.tags.items():
        if tag in td.tag_pushed:
            continue

        def put_tag(tag=tag, dig=dig):
            manifest_put(c, repo, tag, dig, td)
            td.tag_pushed.add(tag)

        check.step(f"manifest tag {tag}", put_tag)
    ds.pushed = True
    check.finish()


def test_tag_list(ds):
    """<data set>/tag-list: every tag listed; `last` excludes the lower half of the sorted list
    and keeps the upper half."""
    need_push(ds)
    c, repo, td = ds.c, ds.repo, ds.td
    tags = tag_list(c, repo)
    errs = [f"missing tag {t!r} from listing {tags}" for t in td.tags if t not in tags]
    if len(tags) >= 2:
        sorted_tags = sorted(tags)
        end = len(sorted_tags) // 2
        last = sorted_tags[end - 1]
        partial = tag_list(c, repo, params={"last": last})
        errs += [f"tag {t!r} returned when last set to {last!r}" for t in sorted_tags[:end] if t in partial]
        errs += [
            f"tag {t!r} missing when last set to {last!r}" for t in sorted_tags[end:] if t not in partial
        ]
    assert not errs, "\n".join(errs)


def test_head(ds):
    """<data set>/head: HEAD manifests by tag and digest, and blobs: 200, no body, Content-Type,
    Content-Length, Docker-Content-Digest."""
    need_push(ds)
    c, repo, td = ds.c, ds.repo, ds.td
    check = Check()
    for tag, dig in td.tags.items():
        if "SkipPullTest" not in td.pull_opts.get(dig, set()):
            check.step(f"manifest-head-by-tag {tag}", manifest_head_exists, c, repo, tag, dig, td)
    for dig in td.man_order:
        if "SkipPullTest" not in td.pull_opts.get(dig, set()):
            check.step(f"manifest-head-by-digest {dig}", manifest_head_exists, c, repo, dig, dig, td)
    for dig in td.blobs:
        check.step(f"blob-head {dig}", blob_head_exists, c, repo, dig, td)
    check.finish()


def test_pull(ds):
    """<data set>/pull: GET manifests by tag and digest (exact bytes, Content-Type,
    Content-Length, digest header) and blobs."""
    need_push(ds)
    c, repo, td = ds.c, ds.repo, ds.td
    check = Check()
    for tag, dig in td.tags.items():
        if "SkipPullTest" not in td.pull_opts.get(dig, set()):
            check.step(f"manifest-by-tag {tag}", manifest_get_exists, c, repo, tag, dig, td)
    for dig in td.man_order:
        if "SkipPullTest" not in td.pull_opts.get(dig, set()):
            check.step(f"manifest-by-digest {dig}", manifest_get_exists, c, repo, dig, dig, td)
    for dig in td.blobs:
        check.step(f"blob-get {dig}", blob_get_exists_full, c, repo, dig, td)
    check.finish()


@pytest.mark.parametrize("ds", REFERRER_DATA_SETS, indirect=True)
def test_referrers(ds):
    """<data set>/referrers: every expected descriptor (digest, mediaType, size, artifactType,
    annotations) is listed; with ?artifactType= the response carries OCI-Filters-Applied:
    artifactType and only descriptors of that type.  Only generated for data sets with referrers."""
    need_push(ds)
    c, repo, td = ds.c, ds.repo, ds.td
    assert td.referrers, f"data set {ds.key} was generated without referrers"
    errs = []
    for subj, goals in td.referrers.items():
        try:
            idx, _ = referrers_list(c, repo, subj)
        except AssertionError as e:
            errs.append(str(e))
            continue
        for g in goals:
            if not any(ref_matches(m, g) for m in idx.get("manifests") or []):
                errs.append(f"entry missing from referrers list, subject {subj}, referrer {g}")
        for at in {g["artifactType"] for g in goals}:
            try:
                idx, resp = referrers_list(c, repo, subj, params={"artifactType": at})
            except AssertionError as e:
                errs.append(str(e))
                continue
            applied = [v.strip() for v in resp.headers.get("OCI-Filters-Applied", "").split(",")]
            if "artifactType" not in applied:
                errs.append(
                    f"registry does not set the expected OCI-Filters-Applied header for the artifactType {at}"
                )
            for g in goals:
                if g["artifactType"] == at and not any(ref_matches(m, g) for m in idx.get("manifests") or []):
                    errs.append(
                        f"entry missing from filtered referrers list ({at}), subject {subj}, referrer {g}"
                    )
            for m in idx.get("manifests") or []:
                if m.get("artifactType") != at:
                    errs.append(f"referrers filter for artifactType {at} included descriptor {m}")
    assert not errs, "\n".join(errs)


def _delete_tag(c, repo, tag):
    manifest_delete(c, repo, tag)
    expect_status(manifest_head_req(c, repo, tag), 404)


def _delete_manifest(c, repo, dig):
    manifest_delete(c, repo, dig)
    expect_status(manifest_head_req(c, repo, dig), 404)


def _delete_blob(c, repo, dig):
    blob_delete(c, repo, dig)
    expect_status(blob_head_req(c, repo, dig), 404)


def test_delete(ds):
    """<data set>/delete: tags (202; 400/405 = unsupported), manifests in reverse push order,
    blobs (202 or 404); each followed by HEAD -> 404 (deletes are atomic)."""
    c, repo, td = ds.c, ds.repo, ds.td
    check = Check()
    for tag in td.tags:
        if tag in td.tag_pushed:
            check.step(f"tag-delete {tag}", _delete_tag, c, repo, tag)
    for dig in reversed(td.man_order):
        check.step(f"manifest-delete {dig}", _delete_manifest, c, repo, dig)
    for dig in td.blobs:
        check.step(f"blob-delete {dig}", _delete_blob, c, repo, dig)
    check.finish()


# ----------------------------------------------------------------------------- ping / empty / errors
def test_ping(oci):
    """ping: GET /v2/"""
    resp = oci.request("GET", "/v2/")
    expect_status(resp, 200)


def test_empty_tag_list(oci, repo):
    """empty/tag list: listing a repository with nothing in it -> 200 (tag list) or 404."""
    tag_list(oci, repo)


def test_empty_referrers(oci, repo):
    """empty/referrers: referrers of a random digest in an empty repository -> 200, an OCI index."""
    referrers_list(oci, repo, digest_of(rand_text().encode()))


def test_missing_manifest_by_digest(oci, repo):
    """missing-manifest/by-digest -> 404"""
    expect_status(manifest_get_req(oci, repo, digest_of(secrets.token_bytes(1024))), 404)


def test_missing_manifest_by_tag(oci, repo):
    """missing-manifest/by-tag -> 404"""
    expect_status(manifest_get_req(oci, repo, f"missing-{rand_text().lower()[:20]}"), 404)


def test_invalid_digest_format(oci, repo):
    """invalid-digest-format: PUT manifests/sha256:baddigeststring -> 400; GET -> 404 or 400."""
    td = TestData("Invalid Manifest Digest")
    man = td.gen_manifest_full(layer_count=1)
    check = Check()
    for dig in td.blobs:
        check.step(f"blob {dig}", blob_post_put, oci, repo, dig, td)

    def put_bad():
        body = td.manifests[man]
        resp = oci.request(
            "PUT",
            f"/v2/{repo}/manifests/sha256:baddigeststring",
            headers={"Content-Type": MT_OCI_IMAGE},
            body=iter([body]),
        )
        expect_status(resp, 400)

    check.step("manifest-put", put_bad)
    check.step(
        "manifest-get", lambda: expect_status(manifest_get_req(oci, repo, "sha256:baddigeststring"), 404, 400)
    )
    for dig in td.blobs:
        check.step(f"blob-delete {dig}", _delete_blob, oci, repo, dig)
    check.finish()


def test_unsupported_is_classified(oci):
    """Sanity check of the port itself: Unsupported is distinct from AssertionError."""
    assert not issubclass(Unsupported, AssertionError)
