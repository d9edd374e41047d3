"""The shipped sentence encoder (all-MiniLM-L6-v2 int8 from PyPI): loads offline, gives unit
vectors, and ranks a paraphrase above an unrelated question."""

from __future__ import annotations

import numpy as np
import pytest

from server.knowledge.embedding import DIMENSION, MiniLmEncoder

pytestmark = pytest.mark.slow


def test_the_encoder_loads_from_its_packages_and_ranks_paraphrases() -> None:
    encoder = MiniLmEncoder.load()
    vectors = encoder.encode(
        ["how much is shipping to canada", "what does delivery to canada cost", "can i talk to a human"]
    )
    assert vectors.shape == (3, DIMENSION) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert float(vectors[0] @ vectors[1]) > 0.7 > 0.2 > float(vectors[0] @ vectors[2])
    assert encoder.encode([]).shape == (0, DIMENSION)
