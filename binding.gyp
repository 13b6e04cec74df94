{
  "targets": [
    {
      "target_name": "brickcrypt_xts",
      "sources": ["native/xts.c", "native/copy-bytes.c", "native/align.c", "native/seek-data.c", "native/syncfs.c", "native/af-chain.c", "native/block-digests.c"],
      "cflags": ["-O3", "-Wall", "-Wextra"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
