"""Which Fly region sits beside which Supabase (AWS) region.

Fly's region list as of late 2026: ams, arn, bom (deprecated by Fly), cdg,
dfw, ewr, fra, gru, iad, jnb, lax, lhr, nrt, ord, sin, sjc, syd, yyz. Fly has
no Dublin region, so Supabase's eu-west-1 (Ireland) pairs with London.
"""

from __future__ import annotations

SUPABASE_TO_FLY_REGION: dict[str, str] = {
    "us-east-1": "iad",
    "us-east-2": "ord",
    "us-west-1": "sjc",
    "us-west-2": "sjc",
    "ca-central-1": "yyz",
    "eu-west-1": "lhr",
    "eu-west-2": "lhr",
    "eu-west-3": "cdg",
    "eu-central-1": "fra",
    "eu-central-2": "fra",
    "eu-north-1": "arn",
    "ap-southeast-1": "sin",
    "ap-southeast-2": "syd",
    "ap-northeast-1": "nrt",
    "ap-northeast-2": "nrt",
    "ap-south-1": "bom",
    "sa-east-1": "gru",
}
