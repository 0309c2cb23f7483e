"""Deterministic hardware identities for simulated devices.

A device stores only a few small fields (indices into the tables below and a per-device
seed); everything else is derived on demand so 10,000 devices stay compact.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["mac", "iphone", "ipad"]
KINDS: tuple[Kind, ...] = ("mac", "iphone", "ipad")

# Serials avoid the letters Apple never uses (I, O).
_SERIAL_ALPHABET = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"


@dataclass(frozen=True, slots=True)
class Model:
    product_name: str
    model_name: str
    model: str
    apple_silicon: bool
    has_battery: bool


@dataclass(frozen=True, slots=True)
class OSRelease:
    version: str
    build: str


MODELS: dict[Kind, tuple[Model, ...]] = {
    "mac": (
        Model("Mac16,10", "Mac mini", "Mac16,10", True, False),
        Model("Mac15,3", "MacBook Pro", "Mac15,3", True, True),
        Model("Mac14,2", "MacBook Air", "Mac14,2", True, True),
        Model("MacBookPro16,1", "MacBook Pro", "MacBookPro16,1", False, True),
        Model("iMac20,1", "iMac", "iMac20,1", False, False),
        Model("Macmini8,1", "Mac mini", "Macmini8,1", False, False),
    ),
    "iphone": (
        Model("iPhone15,2", "iPhone", "MQ0T3LL/A", True, True),
        Model("iPhone16,1", "iPhone", "MTLU3LL/A", True, True),
        Model("iPhone14,5", "iPhone", "MLN03LL/A", True, True),
    ),
    "ipad": (
        Model("iPad13,1", "iPad", "MYFM2LL/A", True, True),
        Model("iPad14,3", "iPad", "MNXD3LL/A", True, True),
    ),
}

OS_RELEASES: dict[Kind, tuple[OSRelease, ...]] = {
    "mac": (
        OSRelease("15.4", "24E263"),
        OSRelease("14.6.1", "23G93"),
        OSRelease("13.6.7", "22G720"),
    ),
    "iphone": (OSRelease("18.4", "22E240"), OSRelease("17.5.1", "21F90")),
    "ipad": (OSRelease("18.4", "22E240"), OSRelease("17.5.1", "21F90")),
}


def new_uuid(rng: random.Random) -> str:
    """An upper-case random (version 4) UUID drawn from ``rng`` so runs repeat by seed."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4)).upper()


def new_udid(rng: random.Random, kind: Kind) -> str:
    """Macs report a UUID; modern iOS devices an ``00008xxx-`` ECID-style UDID."""
    if kind == "mac":
        return new_uuid(rng)
    return f"0000{rng.choice(('8110', '8120', '8030'))}-{rng.getrandbits(64):016X}"[:25]


def new_serial(rng: random.Random, apple_silicon: bool) -> str:
    """Apple silicon era serials are 10 random characters; older ones 12."""
    length = 10 if apple_silicon else 12
    return "".join(rng.choice(_SERIAL_ALPHABET) for _ in range(length))


def _mac_address(seed: int, salt: str) -> str:
    digest = hashlib.blake2b(f"{seed}:{salt}".encode(), digest_size=6).digest()
    first = (digest[0] & 0xFC) | 0x00  # universally administered unicast
    return ":".join(f"{b:02x}" for b in (first, *digest[1:]))


def attributes(
    *,
    kind: Kind,
    udid: str,
    serial: str,
    model: Model,
    os_release: OSRelease,
    attr_seed: int,
    supervised: bool,
    awaiting_configuration: bool,
) -> dict[str, Any]:
    """All DeviceInformation keys a simulated device can answer."""
    capacity = (256.0, 512.0, 1024.0)[attr_seed % 3]
    device_name = f"{serial}'s Computer" if kind == "mac" else f"{model.model_name} {serial[-4:]}"
    attrs: dict[str, Any] = {
        "UDID": udid,
        "SerialNumber": serial,
        "Model": model.model,
        "ModelName": model.model_name,
        "ProductName": model.product_name,
        "DeviceName": device_name,
        "BuildVersion": os_release.build,
        "OSVersion": os_release.version,
        "IsSupervised": supervised,
        "AwaitingConfiguration": awaiting_configuration,
        "DeviceCapacity": capacity,
        "AvailableDeviceCapacity": round(capacity * (0.2 + (attr_seed % 60) / 100), 2),
        "WiFiMAC": _mac_address(attr_seed, "wifi"),
        "BluetoothMAC": _mac_address(attr_seed, "bt"),
        "IsActivationLockEnabled": False,
        "IsCloudBackupEnabled": False,
    }
    if kind == "mac":
        attrs.update(
            {
                "EthernetMAC": _mac_address(attr_seed, "en0"),
                "IsAppleSilicon": model.apple_silicon,
                "HasBattery": model.has_battery,
                "IsMultiUser": False,
                "SupportsLOMDevice": False,
            }
        )
    else:
        attrs.update(
            {
                "IsMultiUser": False,
                "BatteryLevel": round(0.3 + (attr_seed % 70) / 100, 2),
                "IsDeviceLocatorServiceEnabled": False,
            }
        )
        if kind == "iphone":
            attrs["IMEI"] = f"35 {attr_seed % 1000000:06d} {attr_seed % 999999:06d} 1"
    return attrs
