"""The .mat loader (both layouts, bad files, its cache), the graph built from it, its precisions and
recomputation, and the normalised network of the paper."""
import numpy as np
import pytest
import scipy.io

import vgg
from conftest import TINY_WIDTHS, smooth_image, stripes_image, write_tiny
from errors import UserError
from quiet_tf import tf


def test_both_layouts_load_to_the_same_network(tmp_path):
    new = vgg.load(write_tiny(tmp_path / "new.mat", layout="new"))
    old = vgg.load(write_tiny(tmp_path / "old.mat", layout="old"))
    assert new.layer_names == old.layer_names
    assert new.layer_names[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert "conv5_4" in new.layer_names and new.layer_names[-1] == "prob"
    for a, b in zip(new.layers, old.layers):
        assert a.type == b.type
        if a.type == "conv":
            np.testing.assert_array_equal(a.kernel, b.kernel)
            np.testing.assert_array_equal(a.bias, b.bias)
    # The old layout stores a mean image; its spatial mean is the mean pixel.
    np.testing.assert_allclose(old.mean_pixel, vgg.IMAGENET_MEAN, atol=1e-3)
    np.testing.assert_allclose(new.mean_pixel, vgg.IMAGENET_MEAN, atol=1e-4)


def test_fields_are_read_by_name_not_position(tmp_path):
    """The two layouts order the conv fields differently (name first vs weights first)."""
    for layout in ("new", "old"):
        raw = scipy.io.loadmat(str(write_tiny(tmp_path / f"{layout}.mat", layout=layout)))
        names = raw["layers"][0, 0].dtype.names
        assert (names[0] == "name") == (layout == "new")
    network = vgg.load(tmp_path / "old.mat")
    conv = network.layers[0]
    assert conv.kernel.shape == (3, 3, 3, TINY_WIDTHS[0])
    assert conv.pad == (1, 1, 1, 1) and conv.stride == (1, 1)
    assert network.layers[4].type == "pool" and network.layers[4].stride == (2, 2)


def _single_conv_mat(path, kernel):
    weights = np.empty((1, 2), dtype=object)
    weights[0, 0], weights[0, 1] = kernel, np.zeros((1, kernel.shape[3]), np.float32)
    cells = np.empty((1, 2), dtype=object)
    cells[0, 0] = {"name": "conv1_1", "type": "conv", "weights": weights,
                   "pad": np.ones((1, 4)), "stride": np.ones((1, 2))}
    cells[0, 1] = {"name": "relu1_1", "type": "relu"}
    scipy.io.savemat(str(path), {"layers": cells,
                                 "meta": {"normalization": {"averageImage": np.zeros((1, 1, 3))}}})
    return path


def test_kernels_are_used_as_stored_height_width_in_out(tmp_path):
    """An asymmetric kernel (one tap at row 0, column 2) must shift the image up-right: a loader
    that transposes height and width would shift it down-left instead."""
    kernel = np.zeros((3, 3, 3, 1), np.float32)
    kernel[0, 2, 0, 0] = 1.0  # reads x[i - 1, j + 1] of the red channel
    network = vgg.load(_single_conv_mat(tmp_path / "k.mat", kernel))
    image = np.zeros((1, 6, 7, 3), np.float32)
    image[0, 2, 3, 0] = 10.0
    out = vgg.VGG(network, ["conv1_1"])(image)["conv1_1"].numpy()[0, :, :, 0]
    assert out[3, 2] == pytest.approx(10.0)  # y[i, j] = x[i - 1, j + 1]
    assert np.count_nonzero(out) == 1


def test_graph_stops_at_the_deepest_requested_layer(tiny_network):
    net = vgg.VGG(tiny_network, ["relu2_1", "relu1_1"])
    assert net.layers[-1].name == "relu2_1"
    features = net(np.full((1, 16, 20, 3), 100.0, np.float32))
    assert set(features) == {"relu1_1", "relu2_1"}
    assert features["relu1_1"].shape == (1, 16, 20, TINY_WIDTHS[0])
    assert features["relu2_1"].shape == (1, 8, 10, TINY_WIDTHS[1])
    assert features["relu2_1"].dtype == tf.float32


def test_mean_pixel_is_subtracted_and_relu_applied(tiny_network):
    """The input of conv1_1 is image - mean: an image equal to the mean gives relu(bias)."""
    net = vgg.VGG(tiny_network, ["relu1_1"])
    mean_image = np.broadcast_to(tiny_network.mean_pixel, (1, 5, 5, 3)).astype(np.float32)
    out = net(mean_image)["relu1_1"].numpy()
    expected = np.maximum(tiny_network.layers[0].bias, 0)
    np.testing.assert_allclose(out[0, 2, 2], expected, atol=1e-5)


def test_average_pooling_by_default_and_max_on_request(tiny_network):
    image = np.random.default_rng(0).uniform(0, 255, (1, 16, 16, 3)).astype(np.float32)
    avg = vgg.VGG(tiny_network, ["pool1", "relu1_2"])(image)
    mx = vgg.VGG(tiny_network, ["pool1", "relu1_2"], pooling="max")(image)
    x = avg["relu1_2"].numpy()[0]
    blocks = x.reshape(8, 2, 8, 2, -1)
    np.testing.assert_allclose(avg["pool1"].numpy()[0], blocks.mean(axis=(1, 3)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mx["pool1"].numpy()[0], blocks.max(axis=(1, 3)), rtol=1e-5, atol=1e-5)


def test_odd_sizes_keep_the_last_row_and_column(tiny_network):
    features = vgg.VGG(tiny_network, ["pool1"])(np.zeros((1, 9, 7, 3), np.float32))
    assert features["pool1"].shape[1:3] == (5, 4)


def test_missing_layer_lists_the_available_ones(tiny_network):
    with pytest.raises(UserError) as error:
        vgg.VGG(tiny_network, ["relu6_1"])
    message = str(error.value)
    assert "relu6_1" in message and "relu5_4" in message and "conv1_1" in message


@pytest.mark.parametrize("name", ["fc6", "relu7", "prob"])
def test_classifier_layers_are_refused(tiny_network, name):
    with pytest.raises(UserError, match="belongs to the classifier after pool5") as error:
        vgg.VGG(tiny_network, [name])
    assert "relu5_4" in str(error.value)


def test_classifier_weights_are_not_kept(tiny_network):
    assert tiny_network.feature_count == tiny_network.layer_names.index("pool5") + 1
    assert all(layer.kernel is None for layer in tiny_network.layers[tiny_network.feature_count:])


def test_second_load_reads_the_cache_not_the_mat(tmp_path, monkeypatch):
    path = write_tiny(tmp_path / "net.mat")
    first = vgg.load(path)
    assert (tmp_path / "net.mat.cache" / "features.npz").exists()
    import hashlib
    assert first.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()

    def no_parsing(*args, **kwargs):
        raise AssertionError("the .mat was parsed again")
    import scipy.io  # vgg imports it when it parses a .mat
    monkeypatch.setattr(scipy.io, "loadmat", no_parsing)
    second = vgg.load(path)
    assert second.layer_names == first.layer_names and second.sha256 == first.sha256
    for a, b in zip(first.layers, second.layers):
        assert (a.type, a.pad, a.stride, a.pool_size) == (b.type, b.pad, b.stride, b.pool_size)
        if a.kernel is not None:
            np.testing.assert_array_equal(a.kernel, b.kernel)
    np.testing.assert_array_equal(first.mean_pixel, second.mean_pixel)


def test_a_changed_mat_file_is_parsed_again(tmp_path):
    path = write_tiny(tmp_path / "net.mat", seed=1)
    before = vgg.load(path).layers[0].kernel
    write_tiny(path, seed=2)
    after = vgg.load(path).layers[0].kernel
    assert not np.array_equal(before, after)


def test_a_read_only_folder_is_left_alone(tmp_path, monkeypatch):
    folder = tmp_path / "shared"
    folder.mkdir()
    path = write_tiny(folder / "net.mat")
    folder.chmod(0o555)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    try:
        vgg.load(path)
        assert sorted(p.name for p in folder.iterdir()) == ["net.mat"]
        assert list((tmp_path / "home-cache" / "neural-style").glob("*/features.npz"))
    finally:
        folder.chmod(0o755)


def test_cache_goes_under_home_when_it_cannot_sit_beside_the_file(tmp_path, monkeypatch):
    path = write_tiny(tmp_path / "net.mat")
    (tmp_path / "net.mat.cache").write_text("a file in the way, as a read-only folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    vgg.load(path)
    assert list((tmp_path / "home-cache" / "neural-style").glob("*/features.npz"))


# ---- files that are not such a network ------------------------------------------------------

def test_html_page_saved_as_mat(tmp_path):
    path = tmp_path / "imagenet-vgg-verydeep-19.mat"
    path.write_text("<!DOCTYPE html>\n<html><body>404 Not Found</body></html>")
    with pytest.raises(UserError) as error:
        vgg.load(path)
    assert "web page" in str(error.value) and str(path) in str(error.value)
    assert "vgg.py download" in str(error.value)


def test_truncated_download(tmp_path, tiny_mat):
    path = tmp_path / "truncated.mat"
    path.write_bytes(tiny_mat.read_bytes()[:5000])
    with pytest.raises(UserError, match="truncated or corrupt") as error:
        vgg.load(path)
    assert str(path) in str(error.value)


def test_other_mat_file_without_layers(tmp_path):
    path = tmp_path / "other.mat"
    scipy.io.savemat(str(path), {"weights": np.ones(3)})
    with pytest.raises(UserError, match="no 'layers' list"):
        vgg.load(path)


def test_dagnn_struct_array_is_refused(tmp_path):
    path = tmp_path / "dag.mat"
    dag_layers = np.zeros((1, 2), dtype=[("name", object), ("type", object), ("block", object)])
    dag_layers[0, 0] = ("conv1", "dagnn.Conv", np.zeros(1))
    dag_layers[0, 1] = ("relu1", "dagnn.ReLU", np.zeros(1))
    scipy.io.savemat(str(path), {"layers": dag_layers, "vars": np.zeros(1), "params": np.zeros(1)})
    with pytest.raises(UserError, match="DagNN"):
        vgg.load(path)


def test_not_a_mat_file_at_all(tmp_path):
    path = tmp_path / "weights.mat"
    path.write_bytes(b"\x00\x01binary junk" * 100)
    with pytest.raises(UserError, match="not a MATLAB .mat file"):
        vgg.load(path)


def test_missing_file_says_how_to_get_one(tmp_path):
    with pytest.raises(UserError) as error:
        vgg.load(tmp_path / "nowhere.mat")
    assert "does not exist" in str(error.value) and "vgg.py download" in str(error.value)
    assert vgg.SHA256 in str(error.value)


def test_layers_command_lists_the_file(tiny_mat, capsys):
    assert vgg.main(["layers", str(tiny_mat)]) == 0
    out = capsys.readouterr().out
    assert "conv5_4" in out and "[3, 3, 3, 4]" in out


def test_download_command_fetches_and_verifies(tmp_path, tiny_mat, serve):
    url = serve(body=tiny_mat.read_bytes())[0]
    dest = tmp_path / "w" / "net.mat"
    import hashlib
    digest = hashlib.sha256(tiny_mat.read_bytes()).hexdigest()
    assert vgg.main(["download", "--dest", str(dest), "--url", url, "--sha256", digest]) == 0
    assert dest.read_bytes() == tiny_mat.read_bytes()
    assert vgg.load(dest).layer_names == vgg.load(tiny_mat).layer_names


def test_download_command_with_wrong_checksum_fails_cleanly(tmp_path, tiny_mat, serve, capsys):
    url = serve(body=tiny_mat.read_bytes())[0]
    dest = tmp_path / "net.mat"
    assert vgg.main(["download", "--dest", str(dest), "--url", url, "--sha256", "0" * 64]) == 1
    assert not dest.exists() and not (tmp_path / "net.mat.part").exists()
    assert "SHA-256" in capsys.readouterr().err


def test_real_network_loads_with_the_expected_shapes(real_network_path):
    network = vgg.load(real_network_path)
    assert network.layers[0].kernel.shape == (3, 3, 3, 64)
    for name in ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1", "relu5_2"):
        network.index(name)
    assert np.all((network.mean_pixel > 90) & (network.mean_pixel < 130))


IMAGE = smooth_image(32, 40)[np.newaxis]
PHOTOS = [smooth_image(32, 40, seed=s) for s in range(3)] + [stripes_image(36, 36)]


RELUS = ["relu1_1", "relu2_2", "relu3_4", "relu5_4"]


def channel_means(network, photos, names):
    net = vgg.VGG(network, names)
    sums = {n: 0.0 for n in names}
    counts = {n: 0 for n in names}
    for photo in photos:
        for name, f in net(photo[np.newaxis]).items():
            sums[name] = sums[name] + f.numpy().sum(axis=(0, 1, 2))
            counts[name] += f.shape[1] * f.shape[2]
    return {n: sums[n] / counts[n] for n in names}


def test_normalised_network_has_mean_activation_one_per_channel(tiny_network):
    normalised = vgg.normalize(tiny_network, PHOTOS, "test photos")
    means = channel_means(normalised, PHOTOS, RELUS)
    original = channel_means(tiny_network, PHOTOS, RELUS)
    for name in RELUS:
        alive = original[name] > 0
        np.testing.assert_allclose(means[name][alive], 1.0, rtol=1e-3)
        np.testing.assert_array_equal(means[name][~alive], 0.0)  # dead channels stay dead
    assert "test photos" in normalised.normalization


def test_normalised_network_computes_the_same_function_up_to_a_channel_scale(tiny_network):
    normalised = vgg.normalize(tiny_network, PHOTOS, "test photos")
    other = smooth_image(40, 48, seed=11)[np.newaxis]  # not in the normalising set
    before = vgg.VGG(tiny_network, RELUS)(other)
    after = vgg.VGG(normalised, RELUS)(other)
    means = channel_means(tiny_network, PHOTOS, RELUS)
    for name in RELUS:
        scale = np.where(means[name] > 0, means[name], 1.0)
        np.testing.assert_allclose(after[name].numpy() * scale, before[name].numpy(),
                                   rtol=1e-3, atol=1e-3 * float(tf.reduce_max(before[name])))


def test_normalisation_is_cached_by_checksum_photos_and_pooling(tiny_network, monkeypatch):
    first = vgg.normalize(tiny_network, PHOTOS, "cache test", pooling="max")

    def recompute(*args):
        raise AssertionError("recomputed although cached")
    monkeypatch.setattr(vgg, "_channel_means", recompute)
    again = vgg.normalize(tiny_network, PHOTOS, "cache test", pooling="max")
    for a, b in zip(first.layers, again.layers):
        if a.kernel is not None:
            np.testing.assert_array_equal(a.kernel, b.kernel)
    with pytest.raises(AssertionError, match="recomputed"):
        vgg.normalize(tiny_network, PHOTOS, "another photo set", pooling="max")


def test_bfloat16_network_matches_float32_and_returns_float32(tiny_network):
    outputs = ["relu1_1", "relu3_1", "relu5_1"]
    full = vgg.VGG(tiny_network, outputs)(IMAGE)
    half = vgg.VGG(tiny_network, outputs, dtype="bfloat16")(IMAGE)
    for name in outputs:
        assert half[name].dtype == tf.float32
        scale = float(tf.reduce_max(tf.abs(full[name])))
        assert float(tf.reduce_max(tf.abs(half[name] - full[name]))) < 0.05 * scale


def test_recompute_gives_the_same_gradient(tiny_network):
    outputs = ["relu1_1", "relu2_1", "relu4_2", "relu5_1"]
    x = tf.Variable(IMAGE)

    def gradient(recompute):
        net = vgg.VGG(tiny_network, outputs, recompute=recompute)
        with tf.GradientTape() as tape:
            loss = tf.add_n([tf.reduce_sum(tf.square(f)) for f in net(x).values()])
        return tape.gradient(loss, x).numpy()
    stored, recomputed = gradient(False), gradient(True)
    assert np.abs(stored).max() > 0
    np.testing.assert_allclose(recomputed, stored, rtol=1e-4, atol=1e-4 * np.abs(stored).max())


def test_auto_precision_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(vgg.tf.config, "list_physical_devices", lambda kind=None: [])
    monkeypatch.setattr(vgg, "_cpu_has_bf16", lambda: False)
    assert vgg.resolve_precision("auto") == "float32"
    monkeypatch.setattr(vgg, "_cpu_has_bf16", lambda: True)
    assert vgg.resolve_precision("auto") == "bfloat16"
    monkeypatch.setattr(vgg.tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"])
    monkeypatch.setattr(vgg, "_compute_capability", lambda gpu: (7, 5))
    assert vgg.resolve_precision("auto") == "float16"  # no fast bfloat16 before Ampere
    monkeypatch.setattr(vgg, "_compute_capability", lambda gpu: (8, 0))
    assert vgg.resolve_precision("auto") == "bfloat16"
    assert vgg.resolve_precision("float32") == "float32"
    with pytest.raises(UserError, match="precision must be one of"):
        vgg.resolve_precision("int8")
