"""Images from every form a caller or an OpenAI client sends, and the errors bad ones get."""

from __future__ import annotations

import base64

import pytest
from tests.media.conftest import data_url, encode_image
from PIL import Image

from chatplex.errors import InvalidRequestError
from chatplex.media import MediaPolicy, load_image


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("GIF", "image/gif"),
     ("BMP", "image/bmp"), ("TIFF", "image/tiff")],
)
def test_data_urls_of_common_types(fmt: str, mime: str) -> None:
    image = load_image(data_url(encode_image(fmt, (9, 7)), mime), "messages[0].content[1]", trusted=False)
    assert image.mode == "RGB" and image.size == (9, 7)


def test_pil_image_bytes_and_path(tmp_path) -> None:
    png = encode_image("PNG", (5, 4))
    path = tmp_path / "a.png"
    path.write_bytes(png)
    for source in (Image.new("L", (5, 4)), png, str(path), f"file://{path}"):
        image = load_image(source, "images[0]")
        assert image.mode == "RGB" and image.size == (5, 4)
    rgba = load_image(Image.new("RGBA", (3, 3), (1, 2, 3, 0)))
    assert rgba.mode == "RGB"


def test_data_url_without_base64_flag_is_percent_decoded() -> None:
    png = encode_image("PNG")
    url = "data:image/png," + "".join(f"%{b:02x}" for b in png)
    assert load_image(url).size == (8, 6)


@pytest.mark.parametrize(
    ("source", "match"),
    [
        (data_url(b"not an image at all", "image/png"), "not a readable image"),
        (data_url(encode_image("PNG")[:40], "image/png"), "not a readable image"),  # truncated
        ("data:image/png;base64,@@@notbase64@@@", "base64 payload is not valid"),
        ("data:image/png;base64", "needs a ','"),
        ("ftp://example.com/a.png", "unsupported URL scheme"),
        ("", "expected a URL"),
        (12, "expected a URL"),
    ],
)
def test_bad_images_name_the_part(source, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match) as info:
        load_image(source, "messages[0].content[1]", trusted=False)
    assert info.value.param == "messages[0].content[1]"
    assert "messages[0].content[1]" in str(info.value)


def test_unsupported_image_type_is_refused() -> None:
    ico_ok = load_image(encode_image("ICO", (16, 16)))
    assert ico_ok.size == (16, 16)
    pdf = encode_image("PDF")  # PIL writes PDFs but a PDF is not an image a model takes
    with pytest.raises(InvalidRequestError, match="not a readable image|unsupported image type") as info:
        load_image(pdf, "images[2]")
    assert info.value.param == "images[2]"


def test_too_many_bytes_and_pixels() -> None:
    png = encode_image("PNG", (64, 64))
    small = MediaPolicy(max_item_bytes=len(png) - 1)
    with pytest.raises(InvalidRequestError, match="larger than") as info:
        load_image(data_url(png, "image/png"), "messages[1].content[0]", small)
    assert info.value.param == "messages[1].content[0]"
    with pytest.raises(InvalidRequestError, match="larger than"):
        load_image(png, "images[0]", small)
    few = MediaPolicy(max_image_pixels=64 * 64 - 1)
    with pytest.raises(InvalidRequestError, match="64x64, more than 4095 pixels"):
        load_image(png, "images[0]", few)
    with pytest.raises(InvalidRequestError, match="more than"):
        load_image(Image.new("RGB", (64, 64)), "images[0]", few)


def test_oversized_base64_is_refused_before_decoding() -> None:
    policy = MediaPolicy(max_item_bytes=100)
    payload = base64.b64encode(b"\0" * 1000).decode()
    with pytest.raises(InvalidRequestError, match="larger than 100 bytes"):
        load_image(f"data:image/png;base64,{payload}", "p", policy)


def test_local_paths_in_requests_only_under_the_root(tmp_path) -> None:
    inside = tmp_path / "root" / "a.png"
    inside.parent.mkdir()
    inside.write_bytes(encode_image("PNG"))
    outside = tmp_path / "b.png"
    outside.write_bytes(encode_image("PNG"))
    with pytest.raises(InvalidRequestError, match="local file paths are not allowed"):
        load_image(str(inside), "messages[0].content[0]", trusted=False)
    rooted = MediaPolicy(local_root=str(inside.parent))
    assert load_image(str(inside), "p", rooted, trusted=False).size == (8, 6)
    assert load_image(f"file://{inside}", "p", rooted, trusted=False).size == (8, 6)
    for escape in (str(outside), str(inside.parent / ".." / "b.png")):
        with pytest.raises(InvalidRequestError, match="outside the allowed media directory"):
            load_image(escape, "p", rooted, trusted=False)
    link = inside.parent / "link.png"
    link.symlink_to(outside)
    with pytest.raises(InvalidRequestError, match="outside the allowed media directory"):
        load_image(str(link), "p", rooted, trusted=False)
    with pytest.raises(InvalidRequestError, match="cannot read"):
        load_image(str(inside.parent / "missing.png"), "p", rooted, trusted=False)
