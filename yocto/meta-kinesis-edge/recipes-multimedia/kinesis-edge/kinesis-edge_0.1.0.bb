SUMMARY = "Camera producer daemon for Amazon Kinesis Video Streams and Kinesis Data Streams"
DESCRIPTION = "Captures H.264/AAC from V4L2 cameras through GStreamer, muxes Matroska fragments \
as Kinesis Video Streams ingests them, uploads them with PutMedia from a durable buffer and \
reports telemetry to Kinesis Data Streams."
HOMEPAGE = "https://example.invalid/kinesis-edge"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

SRC_URI = "git://example.invalid/kinesis-edge.git;protocol=https;branch=main \
           file://kinesis-edge.toml \
           "
SRCREV = "${AUTOREV}"
S = "${UNPACKDIR}/git"

require ${BPN}-crates.inc

inherit cargo cargo-update-recipe-crates pkgconfig systemd features_check

REQUIRED_DISTRO_FEATURES = "systemd"

# bindgen (v4l2-sys-mit) needs libclang at build time.
DEPENDS = "clang-native glib-2.0 gstreamer1.0 gstreamer1.0-plugins-base"

# Cargo's release profile keeps symbols (strip = false) so that Yocto splits and strips them.
CARGO_BUILD_FLAGS += "--bin kinesis-edge"

do_install:append() {
    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/systemd/kinesis-edge.service ${D}${systemd_system_unitdir}/
    install -d -m 0755 ${D}${sysconfdir}/kinesis-edge
    install -m 0600 ${UNPACKDIR}/kinesis-edge.toml ${D}${sysconfdir}/kinesis-edge/kinesis-edge.toml
}

SYSTEMD_SERVICE:${PN} = "kinesis-edge.service"
SYSTEMD_AUTO_ENABLE = "enable"
CONFFILES:${PN} = "${sysconfdir}/kinesis-edge/kinesis-edge.toml"

# The GStreamer elements the daemon instantiates. x264 and gst-libav carry the "commercial"
# licence flag: add LICENSE_FLAGS_ACCEPTED += "commercial" or rely on a hardware encoder and voaacenc.
RDEPENDS:${PN} = "\
    gstreamer1.0-plugins-base-app \
    gstreamer1.0-plugins-base-videotestsrc \
    gstreamer1.0-plugins-base-audiotestsrc \
    gstreamer1.0-plugins-base-videoconvertscale \
    gstreamer1.0-plugins-base-audioconvert \
    gstreamer1.0-plugins-base-audioresample \
    gstreamer1.0-plugins-base-alsa \
    gstreamer1.0-plugins-good-video4linux2 \
    gstreamer1.0-plugins-good-audioparsers \
    gstreamer1.0-plugins-bad-videoparsersbad \
    ca-certificates \
"
RRECOMMENDS:${PN} = "gstreamer1.0-plugins-ugly-x264 gstreamer1.0-libav"
