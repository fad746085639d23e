// SmartBin reference firmware for an Arduino Uno (ATmega328P), serial protocol v1.
//
// The contract is ../../PROTOCOL.md; the host parser is ../../protocol.py and the host-side
// simulator (../../simulator.py) implements the same behaviour, so every rule here has a Python twin:
//   framing     "$<seq> <TYPE>[ <arg>]...*<CC>\n", CRC-8/SMBUS, <= 120 bytes, 128-byte line buffer
//   commands    HELLO PING ROUTE LID LED BUZ TARE RESET, each answered by ACK/NAK with the same seq
//   unsolicited BOOT (seq 0) TEL (500 ms) HB (1 s) EVT FLT, own sequence counter 1..65535
//   ROUTE       the last 8 ids are remembered; a repeated id is ACKed with dup=1 and not executed
//   lid         open/closed/locked state machine (see lidTransition), EVT lid=<state> on change
//
// Design rules: no String class, no heap, nothing blocks for longer than one ultrasonic echo
// (US_TIMEOUT_US) so the 64-byte UART receive ring never overflows on a host command.
//
// Optional parts are compile-time switches below (HAVE_*); the HELLO `sensors=` list follows them.

#include <Arduino.h>
#include <EEPROM.h>
#include <avr/interrupt.h>
#include <avr/pgmspace.h>
#include <avr/wdt.h>
#include <stdlib.h>
#include <string.h>

// ---- optional hardware ---------------------------------------------------------------------------
// #define HAVE_HX711        // load cell on an HX711 board (read directly, no library: see hx711Read)
#define HAVE_LID_SWITCH      // reed switch that closes when the lid is shut
#define HAVE_LOCK            // lock relay / solenoid bolt
#define HAVE_TEMP            // TMP36 analog temperature sensor
#define HAVE_DROP_SENSOR     // IR break-beam below the flap

// ---- protocol constants: keep in sync with PROTOCOL.md and protocol.py ------------------------------
#define PROTO_VERSION 1
#define FW_NAME "smartbin-fw"
#define FW_VERSION "1.0.0"
#define SERIAL_BAUD 115200UL
#define MAX_FRAME 120                // bytes from '$' to the CRC inclusive (protocol.MAX_FRAME)
#define RX_BUF_SIZE 128              // one line incl. garbage prefix and '\r' (LineBuffer limit)
#define MAX_ARGS 6                   // args kept per command; no command takes more than 2
#define MAX_KEY_LEN 12
#define MAX_VALUE_LEN 40
#define DEDUPE_DEPTH 8               // ROUTE ids remembered
#define TEL_INTERVAL_MS 500UL
#define HB_INTERVAL_MS 1000UL

// ---- pins (see ../README.md) ---------------------------------------------------------------------------
#define NUM_BINS 3
static const uint8_t US_TRIG_PIN[NUM_BINS] = {4, 6, 8};
static const uint8_t US_ECHO_PIN[NUM_BINS] = {5, 7, 12};
#define DROP_PIN 2                   // INT0; receiver output LOW while the beam is broken
#define LID_SWITCH_PIN 3             // to GND when the lid is shut (INPUT_PULLUP)
#define FLAP_SERVO_PIN 9
#define LID_SERVO_PIN 10
#if FLAP_SERVO_PIN != 9 || LID_SERVO_PIN != 10
#error "the servos need Timer1's outputs OC1A (D9) and OC1B (D10)"
#endif
#define LOCK_PIN 11                  // HIGH energises the lock relay (bolt out = locked)
#define LED_PIN 13
#define BUZZER_PIN A0                // active buzzer, HIGH = sound
#define HX711_DOUT_PIN A1
#define HX711_SCK_PIN A2
#define TEMP_PIN A3                  // TMP36: 10 mV/degC, 500 mV at 0 degC

// ---- mechanics and timing -----------------------------------------------------------------------------
static const uint8_t FLAP_ANGLE[NUM_BINS] = {60, 120, 180};  // chute angle per compartment
#define FLAP_HOME_DEG 0              // parked against the stop, item held
#define FLAP_MOVE_MS 400UL           // time for the flap to travel back home
#define DROP_TIMEOUT_MS 2000UL       // no drop seen by then: FLT servo_stall bin=<n>
#define LID_OPEN_DEG 100
#define LID_CLOSED_DEG 5
#define LID_MOVE_MS 700UL            // lid travel; switch readings are ignored meanwhile
#define LID_DEBOUNCE_MS 200UL
#define US_TIMEOUT_US 5000UL         // ~770 mm max range; longer would risk UART overflow
#define US_SLOT_MS 60UL              // one HC-SR04 per slot (echo ring-down), all bins in 180 ms
#define US_FAULT_COUNT 30            // consecutive no-echo readings before FLT sensor_timeout
#define HX711_COUNTS_PER_GRAM 420L   // calibrate: (raw with known mass - raw empty) / grams
#define HX711_TIMEOUT_MS 1000UL      // not ready for this long: FLT hx711
#define DROP_MIN_GRAMS 10L           // load-cell rise that also confirms a drop
#define EEPROM_TARE_ADDR 0           // uint16 magic + int32 tare offset
#define EEPROM_TARE_MAGIC 0x7A4EU

// ---- reset cause bookkeeping ------------------------------------------------------------------------
#define MAGIC_COMMANDED 0x5AFEU      // RESET command
#define MAGIC_WATCHDOG 0xD06DU       // watchdog interrupt fired before the reset

// Error kinds, counted like the host does (protocol.ERROR_KINDS); not reported, kept for debugging.
enum ErrorKind : uint8_t { E_GARBAGE, E_OVERSIZE, E_BAD_ENCODING, E_MALFORMED, E_BAD_CHECKSUM, E_UNKNOWN_TYPE, E_COUNT };
// Two hobby servos on Timer1's hardware PWM (D9 = OC1A flap, D10 = OC1B lid): 50 Hz frames in 0.5 us
// steps, no interrupt. Stands in for the Arduino Servo library (not packaged in Debian), with its angle
// mapping: 0..180 deg -> 544..2400 us.
#define SERVO_MIN_US 544UL
#define SERVO_MAX_US 2400UL
#define SERVO_FRAME_TICKS 40000U     // 20 ms at 16 MHz / 8

class TimerServo {
 public:
  explicit TimerServo(uint8_t pin) : pin_(pin), ticks_(0) {}

  void write(uint8_t deg) {
    if (deg > 180) deg = 180;
    ticks_ = (uint16_t)((SERVO_MIN_US + (SERVO_MAX_US - SERVO_MIN_US) * deg / 180UL) * 2UL);
    if (TCCR1A & comBit()) setCompare();
  }

  // Starts the pulses at the angle written before (so the servo does not jump at power-up).
  void attach() {
    if (!(TCCR1B & _BV(WGM13))) {  // first servo: Timer1 to fast PWM, TOP = ICR1 (mode 14), clk/8
      TCCR1B = 0;
      TCCR1A = _BV(WGM11);
      ICR1 = SERVO_FRAME_TICKS - 1;
      TCNT1 = 0;
      TCCR1B = _BV(WGM13) | _BV(WGM12) | _BV(CS11);
    }
    setCompare();
    pinMode(pin_, OUTPUT);
    TCCR1A |= comBit();
  }

 private:
  uint8_t comBit() const { return pin_ == 9 ? _BV(COM1A1) : _BV(COM1B1); }
  void setCompare() {
    if (pin_ == 9) OCR1A = ticks_;
    else OCR1B = ticks_;
  }
  uint8_t pin_;
  uint16_t ticks_;
};

enum LidState : uint8_t { LID_OPEN = 0, LID_CLOSED = 1, LID_LOCKED = 2 };
enum RouteState : uint8_t { ROUTE_IDLE, ROUTE_WAIT_DROP, ROUTE_RETURN };

struct PatternDef {
  const char *name;
  bool steady;          // constant output `level`
  bool level;
  bool repeat;          // loop the steps; otherwise one shot, then off
  uint8_t steps;        // durations alternate on/off, starting with on
  uint16_t ms[4];
};

struct PatternRun {
  uint8_t pin;
  const PatternDef *def;
  uint8_t step;
  uint32_t stepStart;
};

struct Command {
  uint16_t seq;
  const char *type;
  uint8_t nargs;
  bool tooMany;
  const char *key[MAX_ARGS];
  const char *val[MAX_ARGS];
};

// LED p=off|on|blink|pulse|error|ok, BUZ p=off|beep|alarm|ok (simulator.LED_PATTERNS / BUZ_PATTERNS).
static const PatternDef LED_PATTERNS[] = {
  {"off", true, false, false, 0, {0, 0, 0, 0}},
  {"on", true, true, false, 0, {0, 0, 0, 0}},
  {"blink", false, false, true, 2, {500, 500, 0, 0}},
  {"pulse", false, false, true, 2, {100, 900, 0, 0}},
  {"error", false, false, true, 2, {100, 100, 0, 0}},
  {"ok", false, false, false, 3, {150, 150, 150, 0}},
};
static const PatternDef BUZ_PATTERNS[] = {
  {"off", true, false, false, 0, {0, 0, 0, 0}},
  {"beep", false, false, false, 1, {120, 0, 0, 0}},
  {"alarm", false, false, true, 2, {250, 250, 0, 0}},
  {"ok", false, false, false, 3, {60, 80, 60, 0}},
};
#define N_LED_PATTERNS (sizeof(LED_PATTERNS) / sizeof(LED_PATTERNS[0]))
#define N_BUZ_PATTERNS (sizeof(BUZ_PATTERNS) / sizeof(BUZ_PATTERNS[0]))

static const char *const LID_NAMES[3] = {"open", "closed", "locked"};

// CRC-8/SMBUS (poly 0x07, init 0x00, no reflection, xorout 0x00); crc8("123456789") == 0xF4.
static const uint8_t CRC8_TABLE[256] PROGMEM = {
    0x00, 0x07, 0x0E, 0x09, 0x1C, 0x1B, 0x12, 0x15, 0x38, 0x3F, 0x36, 0x31, 0x24, 0x23, 0x2A, 0x2D,
    0x70, 0x77, 0x7E, 0x79, 0x6C, 0x6B, 0x62, 0x65, 0x48, 0x4F, 0x46, 0x41, 0x54, 0x53, 0x5A, 0x5D,
    0xE0, 0xE7, 0xEE, 0xE9, 0xFC, 0xFB, 0xF2, 0xF5, 0xD8, 0xDF, 0xD6, 0xD1, 0xC4, 0xC3, 0xCA, 0xCD,
    0x90, 0x97, 0x9E, 0x99, 0x8C, 0x8B, 0x82, 0x85, 0xA8, 0xAF, 0xA6, 0xA1, 0xB4, 0xB3, 0xBA, 0xBD,
    0xC7, 0xC0, 0xC9, 0xCE, 0xDB, 0xDC, 0xD5, 0xD2, 0xFF, 0xF8, 0xF1, 0xF6, 0xE3, 0xE4, 0xED, 0xEA,
    0xB7, 0xB0, 0xB9, 0xBE, 0xAB, 0xAC, 0xA5, 0xA2, 0x8F, 0x88, 0x81, 0x86, 0x93, 0x94, 0x9D, 0x9A,
    0x27, 0x20, 0x29, 0x2E, 0x3B, 0x3C, 0x35, 0x32, 0x1F, 0x18, 0x11, 0x16, 0x03, 0x04, 0x0D, 0x0A,
    0x57, 0x50, 0x59, 0x5E, 0x4B, 0x4C, 0x45, 0x42, 0x6F, 0x68, 0x61, 0x66, 0x73, 0x74, 0x7D, 0x7A,
    0x89, 0x8E, 0x87, 0x80, 0x95, 0x92, 0x9B, 0x9C, 0xB1, 0xB6, 0xBF, 0xB8, 0xAD, 0xAA, 0xA3, 0xA4,
    0xF9, 0xFE, 0xF7, 0xF0, 0xE5, 0xE2, 0xEB, 0xEC, 0xC1, 0xC6, 0xCF, 0xC8, 0xDD, 0xDA, 0xD3, 0xD4,
    0x69, 0x6E, 0x67, 0x60, 0x75, 0x72, 0x7B, 0x7C, 0x51, 0x56, 0x5F, 0x58, 0x4D, 0x4A, 0x43, 0x44,
    0x19, 0x1E, 0x17, 0x10, 0x05, 0x02, 0x0B, 0x0C, 0x21, 0x26, 0x2F, 0x28, 0x3D, 0x3A, 0x33, 0x34,
    0x4E, 0x49, 0x40, 0x47, 0x52, 0x55, 0x5C, 0x5B, 0x76, 0x71, 0x78, 0x7F, 0x6A, 0x6D, 0x64, 0x63,
    0x3E, 0x39, 0x30, 0x37, 0x22, 0x25, 0x2C, 0x2B, 0x06, 0x01, 0x08, 0x0F, 0x1A, 0x1D, 0x14, 0x13,
    0xAE, 0xA9, 0xA0, 0xA7, 0xB2, 0xB5, 0xBC, 0xBB, 0x96, 0x91, 0x98, 0x9F, 0x8A, 0x8D, 0x84, 0x83,
    0xDE, 0xD9, 0xD0, 0xD7, 0xC2, 0xC5, 0xCC, 0xCB, 0xE6, 0xE1, 0xE8, 0xEF, 0xFA, 0xFD, 0xF4, 0xF3,
};

// ---- state ----------------------------------------------------------------------------------------
// Reset cause: MCUSR captured before anything else runs (.init3), plus a magic word in .noinit RAM
// that survives a watchdog reset (stock Uno optiboot clears MCUSR, so the magic is what works there).
uint8_t g_mcusrAtBoot __attribute__((section(".noinit")));
uint16_t g_resetMagic __attribute__((section(".noinit")));
void earlyInit(void) __attribute__((naked, used, section(".init3")));

static char g_rx[RX_BUF_SIZE + 1];
static uint8_t g_rxLen = 0;
static bool g_rxDiscard = false;
static uint16_t g_errors[E_COUNT];

static char g_tx[MAX_FRAME + 2];
static uint8_t g_txLen = 0;
static bool g_txOverflow = false;

static uint16_t g_seq = 0;           // unsolicited frames; BOOT is 0
static uint32_t g_lastTel = 0;
static uint32_t g_lastHb = 0;

static uint32_t g_dedupe[DEDUPE_DEPTH];
static uint8_t g_dedupeCount = 0;
static uint8_t g_dedupeNext = 0;

static TimerServo g_flap(FLAP_SERVO_PIN);
static RouteState g_routeState = ROUTE_IDLE;
static uint8_t g_routeBin = 0;
static uint32_t g_routeT0 = 0;
static volatile uint8_t g_dropEdges = 0;

static TimerServo g_lidServo(LID_SERVO_PIN);
static LidState g_lid = LID_CLOSED;
static uint8_t g_lidAngle = LID_CLOSED_DEG;  // last commanded
static bool g_lidMoving = false;
static uint32_t g_lidMoveStart = 0;
static uint32_t g_lidMismatchSince = 0;
static bool g_lidMismatch = false;

static int16_t g_distance[NUM_BINS];
static uint8_t g_noEcho[NUM_BINS];
static uint8_t g_usNext = 0;
static uint32_t g_lastUs = 0;

static PatternRun g_ledRun;
static PatternRun g_buzRun;

#ifdef HAVE_HX711
static int32_t g_raw = 0;            // smoothed raw reading
static bool g_rawValid = false;
static int32_t g_tareOffset = 0;
static uint32_t g_lastHxReady = 0;
static bool g_hxFault = false;
static int32_t g_routeStartGrams = 0;
#endif

// ---- early init / watchdog -------------------------------------------------------------------------

void earlyInit(void) {
  g_mcusrAtBoot = MCUSR;
  MCUSR = 0;
  wdt_disable();  // a watchdog reset leaves the WDT running with the shortest timeout
}

ISR(WDT_vect) {
  // First timeout: the loop hung. Mark it; the second timeout (WDIE is now cleared) resets.
  g_resetMagic = MAGIC_WATCHDOG;
}

static void watchdogStart() {
  cli();
  wdt_reset();
  WDTCSR = _BV(WDCE) | _BV(WDE);
  WDTCSR = _BV(WDIE) | _BV(WDE) | _BV(WDP2) | _BV(WDP1) | _BV(WDP0);  // 2 s, interrupt then reset
  sei();
}

static void watchdogKick() {
  wdt_reset();
  if (!(WDTCSR & _BV(WDIE))) {  // the interrupt fired but the loop recovered: re-arm
    g_resetMagic = 0;
    WDTCSR |= _BV(WDIE);
  }
}

static void softwareReset() {
  Serial.flush();  // the ACK leaves before the reset
  g_resetMagic = MAGIC_COMMANDED;
  wdt_enable(WDTO_15MS);  // reset-only mode (WDIE cleared), so the ISR cannot overwrite the magic
  wdt_reset();            // start the 15 ms from now (simavr keeps the old period until a reset)
  for (;;) {
  }
}

// ---- CRC and output ----------------------------------------------------------------------------------

static uint8_t crc8(const char *data, uint8_t len) {
  uint8_t crc = 0;
  for (uint8_t i = 0; i < len; i++) {
    crc = pgm_read_byte(&CRC8_TABLE[crc ^ (uint8_t)data[i]]);
  }
  return crc;
}

static void txRaw(const char *s) {
  size_t n = strlen(s);
  if (g_txLen + n > MAX_FRAME - 3) {  // room for "*CC"
    g_txOverflow = true;
    return;
  }
  memcpy(g_tx + g_txLen, s, n);
  g_txLen += n;
}

static void txBegin(uint16_t seq, const char *type) {
  char num[8];
  g_txLen = 0;
  g_txOverflow = false;
  g_tx[g_txLen++] = '$';
  utoa(seq, num, 10);
  txRaw(num);
  txRaw(" ");
  txRaw(type);
}

static void txToken(const char *token) {
  txRaw(" ");
  txRaw(token);
}

static void txArg(const char *key, const char *value) {
  txRaw(" ");
  txRaw(key);
  txRaw("=");
  txRaw(value);
}

#ifdef HAVE_HX711
static void txArgLong(const char *key, int32_t value) {
  char num[12];
  ltoa(value, num, 10);
  txArg(key, num);
}
#endif

static void txArgULong(const char *key, uint32_t value) {
  char num[12];
  ultoa(value, num, 10);
  txArg(key, num);
}

static void txEnd() {
  static const char HEX_DIGITS[] = "0123456789ABCDEF";
  if (g_txOverflow) {
    return;  // a bug, never a truncated frame on the wire
  }
  uint8_t crc = crc8(g_tx + 1, g_txLen - 1);
  g_tx[g_txLen++] = '*';
  g_tx[g_txLen++] = HEX_DIGITS[crc >> 4];
  g_tx[g_txLen++] = HEX_DIGITS[crc & 0x0F];
  g_tx[g_txLen++] = '\n';
  Serial.write((const uint8_t *)g_tx, g_txLen);
}

static uint16_t nextSeq() {
  g_seq = (g_seq >= 65535U) ? 1 : g_seq + 1;
  return g_seq;
}

// Starts `$<seq> ACK <TYPE>`; the caller adds its args and calls txEnd().
static void beginAck(const Command &cmd) {
  txBegin(cmd.seq, "ACK");
  txToken(cmd.type);
}

static void sendNak(const Command &cmd, const char *code) {
  txBegin(cmd.seq, "NAK");
  txToken(cmd.type);
  txArg("err", code);
  txEnd();
}

static void sendEvent(const char *key, const char *value) {
  txBegin(nextSeq(), "EVT");
  txArg(key, value);
  txEnd();
}

static void sendFault(const char *code, uint8_t bin) {
  txBegin(nextSeq(), "FLT");
  txArg("code", code);
  if (bin != 0) {
    txArgULong("bin", bin);
  }
  txEnd();
}

static void sendBoot() {
  txBegin(0, "BOOT");
  txArg("fw", FW_NAME);
  txArg("ver", FW_VERSION);
  txArgULong("proto", PROTO_VERSION);
  txEnd();
}

// ---- patterns (LED, buzzer) ----------------------------------------------------------------------

static void patternStart(PatternRun &run, const PatternDef *def, uint32_t now) {
  run.def = def;
  run.step = 0;
  run.stepStart = now;
  if (def->steady) {
    digitalWrite(run.pin, def->level ? HIGH : LOW);
  } else {
    digitalWrite(run.pin, def->steps > 0 ? HIGH : LOW);
  }
}

static void patternService(PatternRun &run, uint32_t now) {
  const PatternDef *def = run.def;
  if (def == NULL || def->steady || run.step >= def->steps) {
    return;
  }
  if (now - run.stepStart < def->ms[run.step]) {
    return;
  }
  run.stepStart += def->ms[run.step];
  run.step++;
  if (run.step >= def->steps) {
    if (!def->repeat) {
      digitalWrite(run.pin, LOW);
      return;
    }
    run.step = 0;
  }
  digitalWrite(run.pin, (run.step % 2 == 0) ? HIGH : LOW);
}

static const PatternDef *findPattern(const PatternDef *table, uint8_t n, const char *name) {
  for (uint8_t i = 0; i < n; i++) {
    if (strcmp(table[i].name, name) == 0) {
      return &table[i];
    }
  }
  return NULL;
}

// ---- sensors ----------------------------------------------------------------------------------------

static bool lidSwitchClosed() {
#ifdef HAVE_LID_SWITCH
  return digitalRead(LID_SWITCH_PIN) == LOW;
#else
  return g_lid != LID_OPEN;
#endif
}

static void measureUltrasonic(uint8_t i) {
  digitalWrite(US_TRIG_PIN[i], LOW);
  delayMicroseconds(2);
  digitalWrite(US_TRIG_PIN[i], HIGH);
  delayMicroseconds(10);
  digitalWrite(US_TRIG_PIN[i], LOW);
  uint32_t echoUs = pulseIn(US_ECHO_PIN[i], HIGH, US_TIMEOUT_US);
  if (echoUs == 0) {
    g_distance[i] = -1;  // no echo (out of range, absorbed, or sensor unplugged)
    if (g_noEcho[i] < 255) {
      g_noEcho[i]++;
    }
    if (g_noEcho[i] == US_FAULT_COUNT) {
      sendFault("sensor_timeout", i + 1);
    }
  } else {
    g_distance[i] = (int16_t)(echoUs * 343UL / 2000UL);  // mm, speed of sound 343 m/s, round trip
    g_noEcho[i] = 0;
  }
}

static void formatTenths(char *out, int32_t tenths) {
  // "-1.5", "21.0" without printf's (absent) float support.
  char num[12];
  uint8_t pos = 0;
  if (tenths < 0) {
    out[pos++] = '-';
    tenths = -tenths;
  }
  ltoa(tenths / 10, num, 10);
  strcpy(out + pos, num);
  pos += strlen(num);
  out[pos++] = '.';
  out[pos++] = (char)('0' + (tenths % 10));
  out[pos] = '\0';
}

#ifdef HAVE_HX711
static int32_t netGrams() {
  return (g_raw - g_tareOffset) / HX711_COUNTS_PER_GRAM;
}

static bool hxReadyPin() {
  return digitalRead(HX711_DOUT_PIN) == LOW;  // DOUT low = conversion ready
}

// One conversion, called while DOUT is low (ready): 24 bits MSB first, then a 25th clock that keeps channel A
// at gain 128. Interrupts are off meanwhile (< 0.1 ms): SCK held high for over 60 us powers the chip down.
static int32_t hx711Read() {
  uint32_t value = 0;
  uint8_t oldSreg = SREG;
  cli();
  for (uint8_t i = 0; i < 25; i++) {
    digitalWrite(HX711_SCK_PIN, HIGH);
    delayMicroseconds(1);
    if (i < 24) {
      value = (value << 1) | (digitalRead(HX711_DOUT_PIN) == HIGH ? 1U : 0U);
    }
    digitalWrite(HX711_SCK_PIN, LOW);
    delayMicroseconds(1);
  }
  SREG = oldSreg;
  if (value & 0x800000UL) {
    value |= 0xFF000000UL;  // two's complement, 24 -> 32 bits
  }
  return (int32_t)value;
}

static void serviceScale(uint32_t now) {
  if (hxReadyPin()) {
    int32_t raw = hx711Read();
    g_raw = g_rawValid ? (g_raw * 3 + raw) / 4 : raw;
    g_rawValid = true;
    g_lastHxReady = now;
    g_hxFault = false;
  } else if (!g_hxFault && now - g_lastHxReady > HX711_TIMEOUT_MS) {
    g_hxFault = true;
    sendFault("hx711", 0);
  }
}
#endif

static void sendTelemetry() {
  char list[MAX_VALUE_LEN + 1];
  char num[8];
  list[0] = '\0';
  for (uint8_t i = 0; i < NUM_BINS; i++) {
    itoa(g_distance[i], num, 10);
    if (strlen(list) + strlen(num) + 1 > MAX_VALUE_LEN) {
      break;
    }
    if (i > 0) {
      strcat(list, ",");
    }
    strcat(list, num);
  }
  txBegin(nextSeq(), "TEL");
  txArg("d", list);
  txArg("lid", LID_NAMES[g_lid]);
#ifdef HAVE_HX711
  if (g_rawValid && !g_hxFault) {
    txArgLong("w", netGrams());  // optional: left out while the load cell is not delivering
  }
#endif
#ifdef HAVE_TEMP
  char temp[12];
  int32_t millivolts = (int32_t)analogRead(TEMP_PIN) * 5000L / 1023L;
  formatTenths(temp, millivolts - 500L);  // TMP36: 10 mV per degC, so mV - 500 = tenths of degC
  txArg("t", temp);
#endif
  txEnd();
}

// ---- lid ----------------------------------------------------------------------------------------------

// The lid state machine (simulator.lid_transition). Returns the NAK code or NULL with *next set:
//   open:   closed->open, open->open, locked->NAK locked
//   close:  open->closed, closed/locked unchanged
//   lock:   closed->locked, locked->locked, open->NAK busy (the bolt cannot engage an open lid)
//   unlock: locked->closed, open/closed unchanged
static const char *lidTransition(LidState state, const char *op, LidState *next) {
  *next = state;
  if (strcmp(op, "open") == 0) {
    if (state == LID_LOCKED) return "locked";
    *next = LID_OPEN;
  } else if (strcmp(op, "close") == 0) {
    if (state == LID_OPEN) *next = LID_CLOSED;
  } else if (strcmp(op, "lock") == 0) {
    if (state == LID_OPEN) return "busy";
    *next = LID_LOCKED;
  } else if (strcmp(op, "unlock") == 0) {
    if (state == LID_LOCKED) *next = LID_CLOSED;
  } else {
    return "bad_arg";
  }
  return NULL;
}

static void lidDrive(LidState state, uint32_t now) {
  if (state == LID_LOCKED) {
    digitalWrite(LOCK_PIN, HIGH);
    return;
  }
  digitalWrite(LOCK_PIN, LOW);
  uint8_t angle = (state == LID_OPEN) ? LID_OPEN_DEG : LID_CLOSED_DEG;
  if (g_lidAngle != angle) {
    g_lidAngle = angle;
    g_lidServo.write(angle);
    g_lidMoving = true;
    g_lidMoveStart = now;
  }
}

static bool lidMoving(uint32_t now) {
  if (g_lidMoving && now - g_lidMoveStart >= LID_MOVE_MS) {
    g_lidMoving = false;
  }
  return g_lidMoving;
}

static void lidSet(LidState state, uint32_t now) {
  if (state == g_lid) {
    return;
  }
  g_lid = state;
  lidDrive(state, now);
  g_lidMismatch = false;
  sendEvent("lid", LID_NAMES[state]);
}

static void serviceLid(uint32_t now) {
#ifdef HAVE_LID_SWITCH
  // A lid forced (or stuck) open while it should be shut, or shut by hand while it should be open.
  if (lidMoving(now)) {
    g_lidMismatch = false;
    return;
  }
  bool closed = lidSwitchClosed();
  bool mismatch = (g_lid == LID_OPEN) ? closed : !closed;
  if (!mismatch) {
    g_lidMismatch = false;
    return;
  }
  if (!g_lidMismatch) {
    g_lidMismatch = true;
    g_lidMismatchSince = now;
    return;
  }
  if (now - g_lidMismatchSince >= LID_DEBOUNCE_MS) {
    lidSet(closed ? LID_CLOSED : LID_OPEN, now);
  }
#else
  (void)now;
#endif
}

// ---- ROUTE -------------------------------------------------------------------------------------------

static void onDropBeam() {
  if (g_dropEdges < 255) {
    g_dropEdges++;
  }
}

static uint8_t takeDropEdges() {
  uint8_t oldSreg = SREG;
  cli();
  uint8_t n = g_dropEdges;
  g_dropEdges = 0;
  SREG = oldSreg;
  return n;
}

static bool dedupeContains(uint32_t id) {
  for (uint8_t i = 0; i < g_dedupeCount; i++) {
    if (g_dedupe[i] == id) {
      return true;
    }
  }
  return false;
}

static void dedupeAdd(uint32_t id) {
  g_dedupe[g_dedupeNext] = id;
  g_dedupeNext = (g_dedupeNext + 1) % DEDUPE_DEPTH;
  if (g_dedupeCount < DEDUPE_DEPTH) {
    g_dedupeCount++;
  }
}

static void serviceRoute(uint32_t now) {
  if (g_routeState == ROUTE_WAIT_DROP) {
    bool dropped = false;
#ifdef HAVE_DROP_SENSOR
    dropped = takeDropEdges() > 0;
#endif
#ifdef HAVE_HX711
    dropped = dropped || (g_rawValid && !g_hxFault && netGrams() - g_routeStartGrams >= DROP_MIN_GRAMS);
#endif
    if (dropped) {
      char num[4];
      utoa(g_routeBin, num, 10);
      sendEvent("drop", num);
    } else if (now - g_routeT0 >= DROP_TIMEOUT_MS) {
      sendFault("servo_stall", g_routeBin);
    } else {
      return;
    }
    g_flap.write(FLAP_HOME_DEG);
    g_routeState = ROUTE_RETURN;
    g_routeT0 = now;
  } else if (g_routeState == ROUTE_RETURN && now - g_routeT0 >= FLAP_MOVE_MS) {
    g_routeState = ROUTE_IDLE;
  }
}

// ---- command parsing -----------------------------------------------------------------------------

// Own names: Arduino.h already has isDigit()/isUpperCase() for int.
static bool chUpper(char c) { return c >= 'A' && c <= 'Z'; }
static bool chDigit(char c) { return c >= '0' && c <= '9'; }
static bool chHexUpper(char c) { return chDigit(c) || (c >= 'A' && c <= 'F'); }

static bool chValue(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || chDigit(c) || c == '_' || c == '.' ||
         c == ',' || c == ':' || c == '+' || c == '-';
}

static bool validType(const char *s) {
  size_t n = strlen(s);
  if (n < 2 || n > 8) return false;
  for (size_t i = 0; i < n; i++) {
    if (!chUpper(s[i])) return false;
  }
  return true;
}

static bool parseUint(const char *s, uint8_t maxDigits, uint32_t *out) {
  size_t n = strlen(s);
  if (n < 1 || n > maxDigits) return false;
  uint32_t v = 0;
  for (size_t i = 0; i < n; i++) {
    if (!chDigit(s[i])) return false;
    v = v * 10 + (uint32_t)(s[i] - '0');
  }
  *out = v;
  return true;
}

static bool parseHexId(const char *s, uint32_t *out) {
  size_t n = strlen(s);
  if (n < 1 || n > 8) return false;
  uint32_t v = 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    uint8_t d;
    if (chDigit(c)) d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    else return false;
    v = (v << 4) | d;
  }
  *out = v;  // ids compare as numbers: "1A2B", "1a2b" and "01a2b" are the same item
  return true;
}

// Splits "k=v" in place; false unless the key/value match protocol.py's _KEY_RE/_VALUE_RE.
static bool splitArg(char *token, const char **key, const char **val) {
  char *eq = strchr(token, '=');
  if (eq == NULL) return false;
  *eq = '\0';
  size_t klen = strlen(token);
  if (klen < 1 || klen > MAX_KEY_LEN) return false;
  for (size_t i = 0; i < klen; i++) {
    if (!((token[i] >= 'a' && token[i] <= 'z') || token[i] == '_')) return false;
  }
  const char *v = eq + 1;
  size_t vlen = strlen(v);
  if (vlen > MAX_VALUE_LEN) return false;
  for (size_t i = 0; i < vlen; i++) {
    if (!chValue(v[i])) return false;
  }
  *key = token;
  *val = v;
  return true;
}

static const char *const HOST_TYPES[] = {"HELLO", "PING", "ROUTE", "LID", "LED", "BUZ", "TARE", "RESET"};

static bool knownType(const char *type) {
  for (uint8_t i = 0; i < sizeof(HOST_TYPES) / sizeof(HOST_TYPES[0]); i++) {
    if (strcmp(HOST_TYPES[i], type) == 0) return true;
  }
  return false;
}

static const char *getArg(const Command &cmd, const char *key) {
  const char *found = NULL;
  for (uint8_t i = 0; i < cmd.nargs; i++) {
    if (strcmp(cmd.key[i], key) == 0) found = cmd.val[i];  // last one wins, like the host's dict
  }
  return found;
}

// True when the command carries exactly the keys in `keys` (a NULL-terminated list); else NAK bad_arg.
static bool argsExactly(const Command &cmd, const char *const *keys) {
  bool ok = !cmd.tooMany;
  for (uint8_t i = 0; ok && i < cmd.nargs; i++) {
    bool known = false;
    for (const char *const *k = keys; *k != NULL; k++) {
      if (strcmp(*k, cmd.key[i]) == 0) known = true;
    }
    ok = known;
  }
  for (const char *const *k = keys; ok && *k != NULL; k++) {
    ok = getArg(cmd, *k) != NULL;
  }
  if (!ok) {
    sendNak(cmd, "bad_arg");
  }
  return ok;
}

// Parses one line (without '\n'); counts and skips anything that is not a valid host command.
static bool parseFrame(char *line, uint8_t len, Command *cmd) {
  int16_t start = -1;
  for (uint8_t i = 0; i < len; i++) {
    if (line[i] == '$') start = i;  // the last '$' starts the frame; bytes before it are garbage
  }
  if (start < 0) {
    g_errors[E_GARBAGE]++;
    return false;
  }
  char *frame = line + start;
  uint8_t flen = len - start;
  int16_t star = -1;
  for (uint8_t i = 0; i < flen; i++) {
    uint8_t c = (uint8_t)frame[i];
    if (c < 0x20 || c > 0x7E) {
      g_errors[E_BAD_ENCODING]++;
      return false;
    }
    if (c == '*') star = i;
  }
  if (star < 0 || flen - star != 3 || !chHexUpper(frame[star + 1]) || !chHexUpper(frame[star + 2])) {
    g_errors[E_MALFORMED]++;
    return false;
  }
  uint8_t expected = (uint8_t)strtoul(frame + star + 1, NULL, 16);
  if (crc8(frame + 1, star - 1) != expected) {
    g_errors[E_BAD_CHECKSUM]++;
    return false;
  }
  frame[star] = '\0';
  // Tokens are split on single spaces (an empty token from a double or trailing space fails its own
  // check) and validated in the host parser's order: seq, TYPE, known TYPE, then each argument.
  cmd->nargs = 0;
  cmd->tooMany = false;
  uint8_t index = 0;
  char *p = frame + 1;
  for (;;) {
    char *space = strchr(p, ' ');
    if (space != NULL) {
      *space = '\0';
    }
    if (index == 0) {
      uint32_t seq;
      if (space == NULL || !parseUint(p, 5, &seq) || seq > 65535UL) {
        g_errors[E_MALFORMED]++;  // also: fewer than two tokens
        return false;
      }
      cmd->seq = (uint16_t)seq;
    } else if (index == 1) {
      if (!validType(p)) {
        g_errors[E_MALFORMED]++;
        return false;
      }
      if (!knownType(p)) {
        g_errors[E_UNKNOWN_TYPE]++;
        return false;
      }
      cmd->type = p;
    } else {
      const char *key;
      const char *val;
      if (!splitArg(p, &key, &val)) {
        g_errors[E_MALFORMED]++;
        return false;
      }
      if (cmd->nargs < MAX_ARGS) {
        cmd->key[cmd->nargs] = key;
        cmd->val[cmd->nargs] = val;
        cmd->nargs++;
      } else {
        cmd->tooMany = true;  // answered with NAK bad_arg, as no command takes that many
      }
    }
    index++;
    if (space == NULL) {
      return true;
    }
    p = space + 1;
  }
}

// ---- command handlers --------------------------------------------------------------------------------

static void cmdHello(const Command &cmd) {
  static const char *const KEYS[] = {"proto", NULL};
  uint32_t hostProto;
  if (!argsExactly(cmd, KEYS)) return;
  if (!parseUint(getArg(cmd, "proto"), 5, &hostProto)) {
    sendNak(cmd, "bad_arg");
    return;
  }
  // The host decides about a protocol mismatch; the MCU only reports its own major.
  char sensors[MAX_VALUE_LEN + 1];
  sensors[0] = '\0';
  strcat(sensors, "us");
#ifdef HAVE_LID_SWITCH
  strcat(sensors, ",lid");
#endif
#ifdef HAVE_LOCK
  strcat(sensors, ",lock");
#endif
#ifdef HAVE_HX711
  strcat(sensors, ",hx711");
#endif
#ifdef HAVE_TEMP
  strcat(sensors, ",temp");
#endif
#ifdef HAVE_DROP_SENSOR
  strcat(sensors, ",drop");
#endif
  beginAck(cmd);
  txArg("fw", FW_NAME);
  txArg("ver", FW_VERSION);
  txArgULong("proto", PROTO_VERSION);
  txArgULong("bins", NUM_BINS);
  txArg("sensors", sensors);
  txEnd();
}

static void cmdPing(const Command &cmd) {
  static const char *const KEYS[] = {NULL};
  if (!argsExactly(cmd, KEYS)) return;
  beginAck(cmd);
  txArgULong("up", millis());
  txEnd();
}

static void cmdRoute(const Command &cmd, uint32_t now) {
  static const char *const KEYS[] = {"bin", "id", NULL};
  uint32_t bin;
  uint32_t id;
  if (!argsExactly(cmd, KEYS)) return;
  const char *idText = getArg(cmd, "id");
  if (!parseUint(getArg(cmd, "bin"), 5, &bin) || bin < 1 || bin > NUM_BINS || !parseHexId(idText, &id)) {
    sendNak(cmd, "bad_arg");
    return;
  }
  if (dedupeContains(id)) {  // a retry whose first ACK was lost: already executed
    beginAck(cmd);
    txArgULong("bin", bin);
    txArg("id", idText);
    txArg("dup", "1");
    txEnd();
    return;
  }
  if (g_routeState != ROUTE_IDLE) {  // the flap is still busy with the previous item
    sendNak(cmd, "busy");
    return;
  }
  dedupeAdd(id);
  takeDropEdges();
#ifdef HAVE_HX711
  g_routeStartGrams = netGrams();
#endif
  g_routeBin = (uint8_t)bin;
  g_routeT0 = now;
  g_routeState = ROUTE_WAIT_DROP;
  g_flap.write(FLAP_ANGLE[bin - 1]);
  beginAck(cmd);
  txArgULong("bin", bin);
  txArg("id", idText);
  txEnd();
}

static void cmdLid(const Command &cmd, uint32_t now) {
  static const char *const KEYS[] = {"op", NULL};
  if (!argsExactly(cmd, KEYS)) return;
  LidState next;
  const char *err = lidTransition(g_lid, getArg(cmd, "op"), &next);
  if (err == NULL && next == LID_LOCKED && g_lid == LID_CLOSED && (lidMoving(now) || !lidSwitchClosed())) {
    err = "busy";  // still closing, or the switch says it is not shut yet
  }
  if (err != NULL) {
    sendNak(cmd, err);
    return;
  }
  beginAck(cmd);
  txArg("lid", LID_NAMES[next]);
  txEnd();
  lidSet(next, now);  // EVT lid=<state> after the ACK, only on a change
}

static void cmdPattern(const Command &cmd, PatternRun &run, const PatternDef *table, uint8_t n, uint32_t now) {
  static const char *const KEYS[] = {"p", NULL};
  if (!argsExactly(cmd, KEYS)) return;
  const PatternDef *def = findPattern(table, n, getArg(cmd, "p"));
  if (def == NULL) {
    sendNak(cmd, "bad_arg");
    return;
  }
  patternStart(run, def, now);
  beginAck(cmd);
  txEnd();
}

static void cmdTare(const Command &cmd) {
  static const char *const KEYS[] = {NULL};
  if (!argsExactly(cmd, KEYS)) return;
#ifdef HAVE_HX711
  if (g_hxFault || !g_rawValid) {
    sendNak(cmd, "fault");
    return;
  }
  g_tareOffset = g_raw;
  EEPROM.put(EEPROM_TARE_ADDR, (uint16_t)EEPROM_TARE_MAGIC);
  EEPROM.put(EEPROM_TARE_ADDR + 2, g_tareOffset);
  beginAck(cmd);
  txEnd();
#else
  sendNak(cmd, "unknown");
#endif
}

static void cmdReset(const Command &cmd) {
  static const char *const KEYS[] = {NULL};
  if (!argsExactly(cmd, KEYS)) return;
  beginAck(cmd);
  txEnd();
  softwareReset();
}

static void dispatch(const Command &cmd, uint32_t now) {
  const char *t = cmd.type;
  if (strcmp(t, "HELLO") == 0) cmdHello(cmd);
  else if (strcmp(t, "PING") == 0) cmdPing(cmd);
  else if (strcmp(t, "ROUTE") == 0) cmdRoute(cmd, now);
  else if (strcmp(t, "LID") == 0) cmdLid(cmd, now);
  else if (strcmp(t, "LED") == 0) cmdPattern(cmd, g_ledRun, LED_PATTERNS, N_LED_PATTERNS, now);
  else if (strcmp(t, "BUZ") == 0) cmdPattern(cmd, g_buzRun, BUZ_PATTERNS, N_BUZ_PATTERNS, now);
  else if (strcmp(t, "TARE") == 0) cmdTare(cmd);
  else if (strcmp(t, "RESET") == 0) cmdReset(cmd);
}

// ---- serial input --------------------------------------------------------------------------------

static void lineComplete() {
  uint8_t len = g_rxLen;
  while (len > 0 && g_rx[len - 1] == '\r') {
    len--;
  }
  if (len == 0) {
    return;  // blank line
  }
  if (len > MAX_FRAME) {
    g_errors[E_OVERSIZE]++;
    return;
  }
  g_rx[len] = '\0';
  Command cmd;
  if (parseFrame(g_rx, len, &cmd)) {
    dispatch(cmd, millis());
  }
}

static void serviceSerial() {
  while (Serial.available() > 0) {
    char c = (char)Serial.read();
    if (c == '\n') {
      if (!g_rxDiscard) {
        lineComplete();
      }
      g_rxLen = 0;
      g_rxDiscard = false;
    } else if (g_rxDiscard) {
      // dropping the rest of an over-long line
    } else if (g_rxLen >= RX_BUF_SIZE) {
      g_errors[E_OVERSIZE]++;
      g_rxDiscard = true;
      g_rxLen = 0;
    } else {
      g_rx[g_rxLen++] = c;
    }
  }
}

// ---- setup / loop ------------------------------------------------------------------------------------

void setup() {
  uint16_t magic = g_resetMagic;
  g_resetMagic = 0;
  uint8_t mcusr = g_mcusrAtBoot;

  Serial.begin(SERIAL_BAUD);
  for (uint8_t i = 0; i < NUM_BINS; i++) {
    pinMode(US_TRIG_PIN[i], OUTPUT);
    digitalWrite(US_TRIG_PIN[i], LOW);
    pinMode(US_ECHO_PIN[i], INPUT);
    g_distance[i] = -1;
    g_noEcho[i] = 0;
  }
  pinMode(LOCK_PIN, OUTPUT);
  digitalWrite(LOCK_PIN, LOW);  // unlocked after every reset; the host re-locks if it wants to
  pinMode(LED_PIN, OUTPUT);
  pinMode(BUZZER_PIN, OUTPUT);
  pinMode(LID_SWITCH_PIN, INPUT_PULLUP);
  pinMode(DROP_PIN, INPUT_PULLUP);

  uint32_t now = millis();
  g_ledRun.pin = LED_PIN;
  g_buzRun.pin = BUZZER_PIN;
  patternStart(g_ledRun, &LED_PATTERNS[0], now);
  patternStart(g_buzRun, &BUZ_PATTERNS[0], now);

  g_flap.write(FLAP_HOME_DEG);  // write before attach: no jump at power-up
  g_flap.attach();
  // The lid is where it physically is (the servo is not driven until a LID command or a mismatch).
  g_lid = lidSwitchClosed() ? LID_CLOSED : LID_OPEN;
  g_lidAngle = (g_lid == LID_OPEN) ? LID_OPEN_DEG : LID_CLOSED_DEG;
  g_lidServo.write(g_lidAngle);
  g_lidServo.attach();

#ifdef HAVE_HX711
  pinMode(HX711_SCK_PIN, OUTPUT);
  digitalWrite(HX711_SCK_PIN, LOW);  // SCK high for > 60 us powers the HX711 down
  pinMode(HX711_DOUT_PIN, INPUT);
  uint16_t tareMagic;
  EEPROM.get(EEPROM_TARE_ADDR, tareMagic);
  if (tareMagic == EEPROM_TARE_MAGIC) {
    EEPROM.get(EEPROM_TARE_ADDR + 2, g_tareOffset);  // TARE survives resets
  }
  g_lastHxReady = now;
#endif
#ifdef HAVE_DROP_SENSOR
  attachInterrupt(digitalPinToInterrupt(DROP_PIN), onDropBeam, FALLING);
#endif

  sendBoot();
  if (magic == MAGIC_COMMANDED) {
    // RESET command: a normal boot
  } else if (magic == MAGIC_WATCHDOG || (mcusr & _BV(WDRF))) {
    sendFault("watchdog", 0);
  } else if (mcusr & _BV(BORF)) {
    sendFault("brownout", 0);  // only visible when the bootloader leaves MCUSR alone (see README)
  }
  g_lastTel = now;
  g_lastHb = now;
  g_lastUs = now;
  watchdogStart();
}

void loop() {
  watchdogKick();
  serviceSerial();
  uint32_t now = millis();
  serviceRoute(now);
  serviceLid(now);
#ifdef HAVE_HX711
  serviceScale(now);
#endif
  patternService(g_ledRun, now);
  patternService(g_buzRun, now);
  if (now - g_lastUs >= US_SLOT_MS) {
    g_lastUs = now;
    serviceSerial();  // empty the UART ring right before the (up to US_TIMEOUT_US) echo wait
    measureUltrasonic(g_usNext);
    g_usNext = (g_usNext + 1) % NUM_BINS;
  }
  now = millis();
  if (now - g_lastTel >= TEL_INTERVAL_MS) {
    g_lastTel = (now - g_lastTel >= 2 * TEL_INTERVAL_MS) ? now : g_lastTel + TEL_INTERVAL_MS;
    sendTelemetry();
  }
  if (now - g_lastHb >= HB_INTERVAL_MS) {
    g_lastHb = (now - g_lastHb >= 2 * HB_INTERVAL_MS) ? now : g_lastHb + HB_INTERVAL_MS;
    txBegin(nextSeq(), "HB");
    txArgULong("up", now);
    txEnd();
  }
}
