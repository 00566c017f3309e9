#!/usr/bin/env python3
"""A teleop device for `controller run --teleop ADDR`, in Python, standard library only.

Use it as a template for your own device (a space mouse, a gamepad, a leader arm): read
the device, map it to actions in policy units ([-1, 1] per action dimension; the robot
file's `action.scale` and `offset` map them to the motors, as for the policy), and call
`TeleopLink.send` at the device's rate with `engaged=True` while the deadman is held.
The controller sends each observation it acts on back; `TeleopLink.receive` returns the
newest one. The datagram format is `firmware_config::teleop` (firmware-config/src/teleop.rs).

    link = TeleopLink(("127.0.0.1", 7979))
    while True:
        link.send(read_my_device(), engaged=deadman_pressed(), success=button_a())
        obs = link.receive()          # None, or (episode, step, in_control, values)

A device that reads motor positions (a leader arm mirroring the robot) converts them
with the robot file's action mapping, the inverse of what the controller sends:

    units = RobotUnits.from_robot_file("my-arm.toml")
    link.send(units.to_policy(read_leader_positions()), engaged=True)

As a script it jogs the robot with a constant action while it runs, to check the wiring
(start with small values; with --robot FILE the action is in the robot's units):

    scripts/teleop_device.py --controller 127.0.0.1:7979 --action 0.1,0 --seconds 3
"""

import argparse
import math
import socket
import struct
import sys
import time
import zlib

MAGIC = b"EXTP"
VERSION = 1
KIND_ACTION = 1
KIND_OBSERVATION = 2
ENGAGED = 1
LABEL_SUCCESS = 2
LABEL_FAILURE = 4
ANSWERS = 8
IN_CONTROL = 1
HEADER = struct.Struct("<4sBBBBII")  # magic, version, kind, n, flags, seq, episode
MAX_DATAGRAM = HEADER.size + 4 * 32 + 4
MAX_ACT = 16  # action values in a datagram at most (firmware_config::protocol::MAX_ACT)
F32_MAX = 3.4028234663852886e38  # the largest finite f32: a datagram's values are f32


def encode_action(seq, values, engaged=False, success=False, failure=False, answers=None):
    """One action datagram: header, n little-endian f32, CRC-32 (zlib's) of the rest.
    `answers`: the step of the observation the action was computed from (a controller
    started with --teleop-wait-ms waits for it)."""
    if success and failure:
        raise ValueError("an action labels the episode a success or a failure, not both")
    flags = (ENGAGED if engaged else 0) | (LABEL_SUCCESS if success else 0)
    flags |= (LABEL_FAILURE if failure else 0) | (ANSWERS if answers is not None else 0)
    ref = answers & 0xFFFFFFFF if answers is not None else 0
    body = HEADER.pack(MAGIC, VERSION, KIND_ACTION, len(values), flags, seq & 0xFFFFFFFF, ref)
    body += struct.pack("<%df" % len(values), *values)
    return body + struct.pack("<I", zlib.crc32(body))


def decode_observation(data):
    """(episode, step, in_control, values) of an observation datagram; ValueError if
    it is not one."""
    if len(data) < HEADER.size + 4:
        raise ValueError("%d bytes is too short for a teleop datagram" % len(data))
    magic, version, kind, n, flags, step, episode = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION or kind != KIND_OBSERVATION:
        raise ValueError("not a version-%d observation datagram" % VERSION)
    if len(data) != HEADER.size + 4 * n + 4:
        raise ValueError("%d values in %d bytes" % (n, len(data)))
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if crc != zlib.crc32(data[:-4]):
        raise ValueError("CRC mismatch")
    values = struct.unpack_from("<%df" % n, data, HEADER.size)
    return episode, step, bool(flags & IN_CONTROL), list(values)


class RobotUnits:
    """A robot file's action mapping: the controller sends `offset + scale * a` to the
    motors for a policy-unit action `a`; `to_policy` is the inverse."""

    def __init__(self, scale, offset):
        if len(scale) != len(offset) or any(s == 0 for s in scale):
            raise ValueError("action.scale and action.offset: same length, no zero scale")
        self.scale, self.offset = list(scale), list(offset)

    @classmethod
    def from_robot_file(cls, path):
        import tomllib  # Python >= 3.11

        with open(path, "rb") as f:
            action = tomllib.load(f)["action"]
        return cls(action["scale"], action["offset"])

    def to_policy(self, values):
        """Motor units to policy units, `(u - offset) / scale`. Values beyond [-1, 1]
        are clamped by the controller's safety envelope (and recorded clamped)."""
        if len(values) != len(self.scale):
            raise ValueError("%d values, the robot file has %d" % (len(values), len(self.scale)))
        return [(u - o) / s for u, o, s in zip(values, self.offset, self.scale)]


class TeleopLink:
    """The device's end of the link: sends actions, collects observations."""

    def __init__(self, controller):
        self.controller = controller
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.seq = 0
        self.received = 0  # observations decoded so far
        self.refused = 0  # datagrams that were not observations (counted, skipped)
        self.send_errors = 0  # datagrams the network refused (counted, not resent)

    def send(self, values, engaged=False, success=False, failure=False, answers=None):
        """Sends one action. Labels act where their flag turns on, so keeping `success`
        True while a button is held ends one episode only. A closed-loop device passes
        `answers=step` of the observation it acted on."""
        self.seq += 1
        data = encode_action(self.seq, values, engaged, success, failure, answers)
        try:
            self.sock.sendto(data, self.controller)
        except OSError:
            # The controller not listening yet, or the network gone for a moment (a Wi-Fi
            # drop: ENETUNREACH ended the loop, and its release never went out). UDP may
            # lose any datagram anyway; the controller's timeout covers the gap.
            self.send_errors += 1

    def receive(self):
        """The newest observation that arrived since the last call, or None."""
        newest = None
        while True:
            try:
                data, _ = self.sock.recvfrom(MAX_DATAGRAM + 1)
            except (BlockingIOError, ConnectionRefusedError):
                return newest
            # The CRC, not the sender's address, tells the controller's datagrams apart
            # (its replies may come from another address of a multihomed host).
            try:
                newest = decode_observation(data)
                self.received += 1
            except ValueError:
                self.refused += 1


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--controller", required=True, help="HOST:PORT of controller run --teleop")
    p.add_argument("--action", required=True, help="comma-separated action, policy units")
    p.add_argument("--robot", help="robot file: --action is in the robot's units")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rate", type=float, default=50.0, help="datagrams per second")
    p.add_argument("--until-observations", type=int, help="stop after this many observations")
    a = p.parse_args()
    # Mistakes end with a usage message and status 2, not a traceback.
    host, sep, port = a.controller.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        p.error("--controller %r: expected HOST:PORT (an IPv4 host), as controller run --teleop prints" % a.controller)
    try:
        values = [float(v) for v in a.action.split(",")]
    except ValueError:
        p.error("--action %r: expected comma-separated numbers, e.g. 0.1,-0.2" % a.action)
    if not all(math.isfinite(v) and abs(v) <= F32_MAX for v in values):
        p.error("--action %r: every value must be finite (as an f32)" % a.action)
    # The controller refuses a datagram of more (every one: the device ran on unheard).
    if len(values) > MAX_ACT:
        p.error("--action: %d values, at most %d (the protocol's action size)" % (len(values), MAX_ACT))
    if a.until_observations is not None and a.until_observations < 1:
        p.error("--until-observations must be 1 or more, not %d" % a.until_observations)
    if not (math.isfinite(a.rate) and a.rate > 0):
        p.error("--rate must be above 0 datagrams per second, not %s" % a.rate)
    if not (math.isfinite(a.seconds) and a.seconds >= 0):
        p.error("--seconds must be 0 or more, not %s" % a.seconds)
    if a.robot:
        try:
            values = RobotUnits.from_robot_file(a.robot).to_policy(values)
        except (OSError, KeyError, ValueError, ImportError, ZeroDivisionError) as e:
            p.error("--robot %s: %s" % (a.robot, e))
        if not all(math.isfinite(v) and abs(v) <= F32_MAX for v in values):
            p.error("--action %r in the units of --robot %s: a value is beyond an f32's range in policy units" % (a.action, a.robot))
    try:
        address = socket.gethostbyname(host)
    except OSError as e:
        p.error("--controller %r: %s" % (a.controller, e))
    link = TeleopLink((address, int(port)))
    last = None
    end = time.monotonic() + a.seconds
    try:
        while time.monotonic() < end:
            if a.until_observations is not None and link.received >= a.until_observations:
                break
            link.send(values, engaged=True)
            time.sleep(1.0 / a.rate)
            last = link.receive() or last
    except KeyboardInterrupt:
        print("teleop_device: interrupted; releasing the deadman", file=sys.stderr)
    finally:
        # Let go of the deadman whatever ended the loop (Ctrl-C, an error): else the arm
        # follows the last engaged action until the controller's timeout. Three, as UDP
        # may lose one.
        for _ in range(3):
            link.send(values, engaged=False)
    print(
        "teleop_device: %d observations, last %s (%d datagrams the network refused)"
        % (link.received, last, link.send_errors)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
