"""The presets: every one makes valid settings, and the seed recipes carry their sources' values."""
import pytest

import stylize
from presets import PRESETS, settings_for_preset

RELU_1 = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_makes_valid_settings(name):
    stylize._check_settings(settings_for_preset(name), style_count=1)


def test_keras_preset_is_keras_examples_neural_style_transfer():
    s, p = settings_for_preset("keras"), PRESETS["keras"]
    assert s.content_layers == {"relu5_2": 1.0}  # block5_conv2
    assert s.style_layers == pytest.approx({name: 1.0 / 5 for name in RELU_1})  # style_weight / len(feature_layers)
    assert (s.content_weight, s.style_weight, s.tv_weight, s.loss_units) == (0.025, 1.0, 1.0, "keras")
    # for i in range(10): fmin_l_bfgs_b(..., maxfun=20), unbounded, from preprocess_image(base_image_path)
    assert (s.optimizer, s.iterations, s.lbfgs_round, s.clip_image, s.init) == ("lbfgs", 200, 20, False, "content")
    assert (s.pooling, p["height"], p["style_at_content_size"]) == ("max", 400, True)  # img_nrows = 400


def test_tf_tutorial_preset_is_the_tensorflow_tutorial():
    s, p = settings_for_preset("tf-tutorial"), PRESETS["tf-tutorial"]
    assert s.content_layers == {"relu5_2": 1.0}
    assert s.style_layers == pytest.approx({name: 1.0 / 5 for name in RELU_1})  # weight / num_style_layers
    assert (s.content_weight, s.style_weight, s.tv_weight, s.loss_units) == (1e4, 1e-2, 30.0, "tf-tutorial")
    # Adam(learning_rate=0.02, beta_1=0.99, epsilon=1e-1) on 0..1 is lr x255 and epsilon /255 on 0..255
    assert (s.optimizer, s.learning_rate, s.adam_beta1, s.adam_epsilon) == ("adam", 0.02 * 255, 0.99, 0.1 / 255)
    assert (s.iterations, s.init, s.clip_image, s.pooling, p["max_size"]) == (1000, "content", True, "max", 512)
