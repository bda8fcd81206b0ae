"""The label table against the official cityscapesscripts table."""

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import labels as official

from dakd.data import labels


def test_names_colours_and_ids_match_cityscapesscripts():
    evaluated = sorted(
        (lab for lab in official if 0 <= lab.trainId < 255), key=lambda lab: lab.trainId
    )
    assert [lab.name for lab in evaluated] == list(labels.CLASS_NAMES)
    assert [lab.id for lab in evaluated] == list(labels.LABEL_IDS)
    assert [tuple(lab.color) for lab in evaluated] == [tuple(c) for c in labels.PALETTE.tolist()]


def test_id_to_trainid_matches_every_official_label():
    for lab in official:
        if lab.id < 0:
            continue
        expected = lab.trainId if 0 <= lab.trainId < 255 else 255
        assert labels.ID_TO_TRAINID[lab.id] == expected, lab.name
    assert (labels.ID_TO_TRAINID[34:] == 255).all()


def test_ids_to_train_ids_and_colorize():
    ids = np.array([[7, 26], [0, 33]])
    assert labels.ids_to_train_ids(ids).tolist() == [[0, 13], [255, 18]]
    rgb = labels.colorize(np.array([[0, 255]]))
    assert rgb[0, 0].tolist() == [128, 64, 128] and rgb[0, 1].tolist() == [0, 0, 0]


def test_out_of_space_labels_are_rejected():
    labels.check_train_ids(np.array([0, 18, 255]))
    with pytest.raises(ValueError, match=r"\[19\]"):
        labels.check_train_ids(np.array([0, 19]), where="x.png")
    with pytest.raises(ValueError, match="0..255"):
        labels.ids_to_train_ids(np.array([300]))
