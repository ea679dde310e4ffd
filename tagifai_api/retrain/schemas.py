"""The body of ``POST /models/retrain``; the OpenAPI document is generated from it too."""

from __future__ import annotations

from marshmallow import Schema

from tagifai_api.web.schemas import StrictBoolean


class RetrainRequestSchema(Schema):
    """``{"shadow": false}``: the body is optional."""

    shadow = StrictBoolean(load_default=False, metadata={
        "description": "A candidate that passes the gate becomes the shadow (promoted later by POST "
                       "/models/default/promote-shadow) instead of the default at once."})
