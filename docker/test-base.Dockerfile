# `make docker-test`'s stand-in for python:3.11-slim-bookworm, which cannot be pulled here:
# a Debian bookworm root file system made by debootstrap (python3 3.11, python3-venv,
# ca-certificates), packed as rootfs.tar in the build context.
FROM scratch
ADD rootfs.tar /
ENV LANG=C.UTF-8
CMD ["python3"]
