"""The import paths Serve configs written before the packages by layer name (`swiftembed.serve:build_app`,
`swiftembed.serve:in_flight_policy`).

The deployment lives in swiftembed/ray/deployment.py; this keeps existing configs and RayServices deploying.
"""

from swiftembed.ray.deployment import SwiftEmbedDeployment, build_app, in_flight_policy

__all__ = ["SwiftEmbedDeployment", "build_app", "in_flight_policy"]
