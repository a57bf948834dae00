import pytest

from fer_lab.labels import EXPRESSIONS, FLIP_PERMUTATION, LANDMARKS, STREAMS, LabelMap, expression_index


def test_canonical_orders():
    assert EXPRESSIONS == ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
    assert LANDMARKS == ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
    assert STREAMS[0] == "global" and STREAMS[-1] == "fused" and STREAMS[1:6] == LANDMARKS


def test_flip_permutation_swaps_left_and_right():
    flipped = [LANDMARKS[i] for i in FLIP_PERMUTATION]
    assert flipped == ["right_eye", "left_eye", "nose", "mouth_right", "mouth_left"]
    assert [FLIP_PERMUTATION[i] for i in FLIP_PERMUTATION] == list(range(5))  # an involution


def test_expression_synonyms_and_unknown():
    assert expression_index("Happy") == 3 and expression_index("angry") == 5
    with pytest.raises(KeyError, match="contempt"):
        expression_index("contempt")


def test_label_map_maps_drops_and_rejects():
    # FER2013's native order: 0 angry 1 disgust 2 fear 3 happy 4 sad 5 surprise 6 neutral
    m = LabelMap.from_names("fer2013", {0: "anger", 1: "disgust", 2: "fear", 3: "happiness", 4: "sadness",
                                        5: "surprise", 6: "neutral"}, dropped={7: "contempt"})
    mapped, reasons = m.map_all([0, 5, 7, 7, 3])
    assert mapped == [5, 0, None, None, 3]
    assert sum(reasons.values()) == 2 and "contempt" in next(iter(reasons))
    with pytest.raises(ValueError, match=r"label 9 in row 4.*not a known label"):
        m(9, "row 4")


def test_label_map_rejects_bad_tables():
    with pytest.raises(ValueError, match="outside"):
        LabelMap("x", {0: 7})
    with pytest.raises(ValueError, match="both mapped and dropped"):
        LabelMap("x", {0: 1}, {0: "none"})
