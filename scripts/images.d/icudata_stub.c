/* An empty ICU data library: libicudata.so.72 without its 30 MB of locale data.
 *
 * Why: in the agent image ICU is reached only through libxml2 (linked by LLVM, which
 * bpftrace needs, and by lttng/lttng-sessiond) and through gdb's source highlighter.
 * None of them asks ICU for data on the agent's paths: libxml2 converts UTF-8 and
 * Latin-1 itself, LTTng writes its session XML in UTF-8, gdb highlights nothing without
 * a terminal. The real data library is a 30 MB table of every locale's collation,
 * calendars and converters. ICU's own build ships this same stub ("stubdata",
 * icu4c/source/stubdata/stubdata.cpp): a table of contents with no entries. ICU then
 * looks for data files (ICU_DATA) and answers U_MISSING_RESOURCE_ERROR/U_FILE_ACCESS_ERROR
 * to a caller that wants any, instead of crashing.
 *
 * The e2e stage runs bpftrace, LTTng and gdb against the built image (tests/e2e).
 */
#include <stdint.h>

typedef struct {
    uint16_t size;
    uint16_t reservedWord;
    uint8_t isBigEndian;
    uint8_t charsetFamily;
    uint8_t sizeofUChar;
    uint8_t reservedByte;
    uint8_t dataFormat[4];
    uint8_t formatVersion[4];
    uint8_t dataVersion[4];
} UDataInfo;

typedef struct {
    uint16_t headerSize;
    uint8_t magic1;
    uint8_t magic2;
    UDataInfo info;
    char padding[8];
    uint32_t count;
    uint32_t reserved;
    int fakeNameAndData[4];
} ICU_Data_Header;

/* The entry point libicuuc.so.72 links against (U_ICUDATA_ENTRY_POINT for ICU 72). */
__attribute__((visibility("default"))) const ICU_Data_Header icudt72_dat = {
    32, 0xda, 0x27,
    {sizeof(UDataInfo), 0, 0 /* little-endian */, 0 /* ASCII family */, 2, 0,
     {0x54, 0x6f, 0x43, 0x50} /* "ToCP" */, {1, 0, 0, 0}, {0, 0, 0, 0}},
    {0, 0, 0, 0, 0, 0, 0, 0},
    0, 0,
    {0, 0, 0, 0},
};
