"""Model cards: what `save` writes, `load` reads back; the Hub's keys are where the Hub looks for them."""

import pytest
import yaml

from mvq.errors import UserError
from mvq.models.card import CARD_FILE, ModelCard, example_images


def card() -> ModelCard:
    return ModelCard(name="photos-64", summary="An MQ-VAE for 64 px photographs.",
                     training_data="195 photographs (CC BY 4.0 and CC0).", license="apache-2.0",
                     datasets=["photos"], tags=["image-tokenizer"], command="mvq train configs/x.yaml",
                     hardware="2 CPU cores", wall_time="3 h", metrics={"psnr": 21.5, "lpips_vgg": 0.27},
                     metrics_command="mvq eval recon --vae zoo/photos-64", notes="## Samples\n\n![grid](grid.png)")


def test_a_card_reads_back_what_it_wrote(tmp_path):
    written = card()
    written.save(tmp_path)
    assert ModelCard.load(tmp_path) == written
    text = (tmp_path / CARD_FILE).read_text()
    header = yaml.safe_load(text.split("---\n")[1])  # the Hub reads these keys from the front-matter
    assert header["library_name"] == "mvq" and header["license"] == "apache-2.0"
    assert header["datasets"] == ["photos"] and "mvq" in header["tags"]
    body = text.split("---\n", 2)[2]
    assert "195 photographs (CC BY 4.0 and CC0)." in body and "mvq train configs/x.yaml" in body
    assert "| psnr | 21.5 |" in body and "![grid](grid.png)" in body


def test_folders_without_a_card_or_with_another_readme_have_none(tmp_path):
    assert ModelCard.load(tmp_path) is None
    (tmp_path / CARD_FILE).write_text("# Just a readme\n")
    assert ModelCard.load(tmp_path) is None
    (tmp_path / CARD_FILE).write_text("---\nlicense: mit\n---\n# A card of another library\n")
    assert ModelCard.load(tmp_path) is None


def test_broken_front_matter_is_one_line_naming_the_file(tmp_path):
    (tmp_path / CARD_FILE).write_text("---\nmvq: [unclosed\n---\n")
    with pytest.raises(UserError, match=f"{CARD_FILE}: the model card's front-matter is not valid YAML"):
        ModelCard.load(tmp_path)


def test_examples_are_the_pngs_of_the_examples_folder_in_name_order(tmp_path):
    assert example_images(tmp_path) == []
    (tmp_path / "examples").mkdir()
    for name in ["b.png", "a.png", "notes.txt"]:
        (tmp_path / "examples" / name).write_bytes(b"")
    assert [p.name for p in example_images(tmp_path)] == ["a.png", "b.png"]
