"""Realistic sizes (issue 12, item 5): the shapes-cnn image experiment and the size models of the memory check."""

from __future__ import annotations

import numpy as np
import pytest

from pyagg.cluster.workloads import describe, load_experiment


@pytest.mark.timeout(300)
@pytest.mark.parametrize("spec,args", [("digits-mlp", {"hidden": 48}), ("digits-cnn", {}),
                                       ("synthetic", {"dim": 300, "n_train": 64, "n_test": 16}),
                                       ("shapes-cnn", {"n_train": 40, "n_test": 10})])
def test_describe_matches_the_built_model(spec, args):
    from pyagg.cluster.model import FlatModel

    exp = load_experiment(spec, seed=0, **args)
    assert describe(spec, **args)["d"] == FlatModel(exp, seed=0).d
    assert describe(spec, **args)["data_bytes"] >= exp.x_train.nbytes + exp.x_test.nbytes


def test_shapes_cnn_is_realistic_and_generated():
    assert describe("shapes-cnn")["d"] >= 1_000_000
    assert describe("shapes-cnn", width=2440)["d"] >= 10_000_000
    a = load_experiment("shapes-cnn", seed=0, n_train=30, n_test=10)
    b = load_experiment("shapes-cnn", seed=5, n_train=30, n_test=10)
    assert a.x_train.shape == (30, 32, 32, 3) and a.num_classes == 10
    np.testing.assert_array_equal(a.x_train, b.x_train)  # the data depends on data_seed only
    assert set(np.unique(load_experiment("shapes-cnn", n_train=100, n_test=10).y_train)) == set(range(10))
    with pytest.raises(ValueError, match="multiple of 4"):
        load_experiment("shapes-cnn", size=30)
