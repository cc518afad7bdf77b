// gzip and deflate (the zlib format) for the tests of HTTP content codings,
// straight on zlib: the tests check the server's coding against zlib's own,
// not against the server's code.
#pragma once

#include <zlib.h>

#include <stdexcept>
#include <string>
#include <string_view>

namespace meshrt::testing {

// 16 + 15: gzip's wrapper (RFC 1952); 15: zlib's (RFC 1950), HTTP's "deflate".
constexpr int kGzipBits = 16 + MAX_WBITS, kDeflateBits = MAX_WBITS;

inline std::string zlib_compress(std::string_view data, int window_bits, int level = Z_DEFAULT_COMPRESSION) {
  z_stream z{};
  if (deflateInit2(&z, level, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY) != Z_OK) throw std::runtime_error("deflateInit2");
  std::string out(deflateBound(&z, static_cast<uLong>(data.size())), '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  z.avail_in = static_cast<uInt>(data.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  int rc = deflate(&z, Z_FINISH);
  out.resize(out.size() - z.avail_out);
  deflateEnd(&z);
  if (rc != Z_STREAM_END) throw std::runtime_error("deflate did not finish");
  return out;
}

inline std::string gzip(std::string_view data) { return zlib_compress(data, kGzipBits); }
inline std::string deflate_zlib(std::string_view data) { return zlib_compress(data, kDeflateBits); }

// The whole of data decompressed; throws when it is not one complete stream.
inline std::string zlib_decompress(std::string_view data, int window_bits) {
  z_stream z{};
  if (inflateInit2(&z, window_bits) != Z_OK) throw std::runtime_error("inflateInit2");
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  z.avail_in = static_cast<uInt>(data.size());
  std::string out;
  char buffer[16384];
  int rc = Z_OK;
  while (rc == Z_OK) {
    z.next_out = reinterpret_cast<Bytef*>(buffer);
    z.avail_out = sizeof buffer;
    rc = inflate(&z, Z_NO_FLUSH);
    out.append(buffer, sizeof buffer - z.avail_out);
  }
  bool complete = rc == Z_STREAM_END && z.avail_in == 0;
  inflateEnd(&z);
  if (!complete) throw std::runtime_error("not a complete zlib stream");
  return out;
}

inline std::string gunzip(std::string_view data) { return zlib_decompress(data, kGzipBits); }
inline std::string inflate_zlib(std::string_view data) { return zlib_decompress(data, kDeflateBits); }

}  // namespace meshrt::testing
