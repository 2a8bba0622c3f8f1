// stb_image compiled into the fuzz targets (instead of Debian's libstb.so) so that the decoders are
// instrumented: coverage guides the fuzzer into them and the sanitizers check them.
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image.h>
#include <stb_image_write.h>
