"""Media input: turn what a caller gives (PIL images, paths, bytes, data URLs, remote URLs, audio arrays) into
decoded, validated images, video frames and audio clips, with limits on count, size and where bytes may come from.

    policy.py   MediaPolicy: limits and which sources are allowed
    ssrf.py     the address check that keeps remote fetches off private networks
    sources.py  a source (data URL, http(s) URL, local path, bytes) -> bytes, under the policy
    image.py    bytes / PIL image -> RGB PIL image
    audio.py    bytes / path / (array, rate) -> mono float32 array at a target rate
    video.py    bytes / path / list of frames -> sampled RGB frames (PyAV)
    parts.py    a request's messages and image/audio arguments -> ordered, loaded media

Every error is an `InvalidRequestError` whose `param` names the offending item (`messages[0].content[1]`,
`images[0]`), so the server can answer 400 with the field.
"""

from chatplex.media.audio import AudioClip, load_audio
from chatplex.media.image import load_image
from chatplex.media.parts import RequestMedia, collect_media, media_items, text_only_error
from chatplex.media.policy import MediaPolicy
from chatplex.media.video import VideoClip, load_video

__all__ = [
    "AudioClip",
    "MediaPolicy",
    "RequestMedia",
    "VideoClip",
    "collect_media",
    "load_audio",
    "load_image",
    "load_video",
    "media_items",
    "text_only_error",
]
