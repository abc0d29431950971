# hadolint global ignore=DL3003,DL3008,DL3009,DL3013,DL3015,DL3027,DL3042,DL3059
# These rules flag the build style this image has always had (cd inside RUN,
# unpinned apt/pip tools, pip cache, separate RUN steps for readable build logs).
# They are ignored here so that hadolint gates every other rule on this file.
