// TQ1 front end for ternary_acc: reads ggml's TQ1_0 blocks verbatim (1.6 bits a weight, 54
// bytes per 256 weights against TQ2's 64: 16% less weight traffic) and hands the core beats of
// LANES digits.
//
// TQ1_0 block (include/mmfree/file_ternary.hpp): qs[48], qh[4], an f16 scale (ignored here; the
// library checks it is 1.0). Byte p holds the base-3 digits of 5 weights (qh: 4) as
// q = ceil(v * 256 / 243); digit n is the top trit of (3^n * q) mod 256, i.e. step n of
//   t = 3q (= (q << 1) + q);  digit = t[9:8];  q = t[7:0].
// So one adder per byte decodes it, a digit a cycle: a block takes 6 cycles (5 digits, then the
// last one stored), all 52 bytes at once, with no multipliers. Weights of byte p at step n:
//   p < 32: p + 32n;   32 <= p < 48: 160 + (p - 32) + 16n;   48 <= p < 52 (n < 4): 240 + (p - 48) + 4n.
//
// Two block buffers: one decodes while the other is handed out, 256 / LANES beats, in weight
// order: beat t carries weights t * LANES + g for lane g, as the core wants them (digit k of
// byte i of out_w is lane k * BYTES + i). So rows stream at one beat per cycle whenever
// 256 / LANES >= 8 (16 and 32 lanes); at 64 lanes a block takes 8 cycles for 4 beats.
// Rows are whole blocks (ggml's TQ1_0 has no partial block; the library stores other rows as I8).
// blk_ready depends on registers only; nothing combinational runs from out_ready to blk_ready.
module tq1_decoder #(
    parameter integer BYTES = 4  // the core's bytes per beat; LANES = 4 * BYTES
) (
    input  wire                 clk,
    input  wire                 rst,
    input  wire                 blk_valid,
    output wire                 blk_ready,
    input  wire [8*54-1:0]      blk,        // one TQ1_0 block, byte 0 in bits 7:0
    input  wire                 blk_last,   // the last block of its row
    output wire                 out_valid,
    input  wire                 out_ready,
    output wire [8*BYTES-1:0]   out_w,      // for ternary_acc's in_w
    output wire                 out_last
);
  localparam integer LANES = 4 * BYTES;
  localparam integer BEATS = 256 / LANES;
  localparam integer TW = BEATS > 1 ? $clog2(BEATS) : 1;
  localparam [31:0] LAST_BEAT = BEATS - 1;

  generate
    if (BYTES < 1 || BYTES > 64 || (64 % BYTES) != 0 || (BYTES & (BYTES - 1)) != 0) begin : bad_bytes
      BYTES_must_be_a_power_of_two_that_divides_64 check();
    end
  endgenerate

  // ---- A: decoding -------------------------------------------------------------------------
  reg  [7:0]   q [0:51];
  reg  [2:0]   step;       // 0..4: digit `step` of every byte; 1..5: the one before it stored; 6 = done
  reg          a_full, a_last;
  reg  [511:0] a_dig;      // digit of weight w in bits 2w+1:2w
  wire         a_done = a_full && step == 3'd6;
  assign blk_ready = !a_full;

  // ---- B: handing out ----------------------------------------------------------------------
  reg  [511:0]  b_dig;
  reg           b_full, b_last;
  reg  [TW-1:0] beat;
  wire          b_end = beat == LAST_BEAT[TW-1:0];
  wire          out_fire = out_valid && out_ready;
  wire          b_free = !b_full || (out_fire && b_end);
  wire          move = a_done && b_free;
  assign out_valid = b_full;
  assign out_last = b_last && b_end;

  genvar p, n, l;
  generate
    for (p = 0; p < 52; p = p + 1) begin : byte_dec
      wire [9:0] t = {2'b00, q[p]} + {1'b0, q[p], 1'b0};  // 3q
      // The digit is registered beside its byte: the adder stays local, and the long wires to
      // the digit buffer get a cycle of their own.
      reg [1:0] d;
      always @(posedge clk) begin
        if (blk_valid && blk_ready) q[p] <= blk[8*p +: 8];
        else if (a_full && step < 3'd5) q[p] <= t[7:0];
        d <= t[9:8];
      end
      for (n = 0; n < (p < 48 ? 5 : 4); n = n + 1) begin : digit
        localparam integer W = p < 32 ? p + 32 * n : p < 48 ? 160 + (p - 32) + 16 * n : 240 + (p - 48) + 4 * n;
        always @(posedge clk)
          if (a_full && step == n + 1) a_dig[2*W +: 2] <= d;
      end
    end
    // Lane k * BYTES + i of beat `beat` is weight beat * LANES + k * BYTES + i.
    for (l = 0; l < LANES; l = l + 1) begin : lane
      if (BEATS == 1) begin : whole_block
        assign out_w[8*(l % BYTES) + 2*(l / BYTES) +: 2] = b_dig[2*l +: 2];
      end else begin : one_of_beats
        wire [2*BEATS-1:0] choices;
        for (n = 0; n < BEATS; n = n + 1) begin : pick
          assign choices[2*n +: 2] = b_dig[2*(n*LANES + l) +: 2];
        end
        assign out_w[8*(l % BYTES) + 2*(l / BYTES) +: 2] = choices[{beat, 1'b0} +: 2];  // 2 * beat, as wiring
      end
    end
  endgenerate

  always @(posedge clk) begin
    if (rst) begin
      a_full <= 1'b0;
      b_full <= 1'b0;
      step <= 3'd0;
      beat <= {TW{1'b0}};
    end else begin
      if (blk_valid && blk_ready) begin
        a_full <= 1'b1;
        a_last <= blk_last;
        step <= 3'd0;
      end else if (a_full && step != 3'd6) begin
        step <= step + 3'd1;
      end else if (move) begin
        a_full <= 1'b0;
      end
      if (out_fire) beat <= b_end ? {TW{1'b0}} : beat + 1'b1;
      if (move) begin
        b_dig <= a_dig;
        b_last <= a_last;
        b_full <= 1'b1;
      end else if (out_fire && b_end) begin
        b_full <= 1'b0;
      end
    end
  end
endmodule

// The TQ1 core: tq1_decoder in front of ternary_acc. Weights come a TQ1_0 block at a time;
// activations a beat at a time (LANES of them, in weight order: beat t of a block carries
// weights t * LANES + g); the core's result handshake is unchanged.
module ternary_acc_tq1 #(
    parameter integer BYTES = 4,
    parameter integer ACC_W = 32
) (
    input  wire                    clk,
    input  wire                    rst,
    input  wire                    blk_valid,
    output wire                    blk_ready,
    input  wire [8*54-1:0]         blk,
    input  wire                    blk_last,
    input  wire                    x_valid,
    output wire                    x_ready,
    input  wire [8*4*BYTES-1:0]    x,
    output wire                    out_valid,
    input  wire                    out_ready,
    output wire signed [ACC_W-1:0] out_acc
);
  wire w_valid, w_ready, w_last, core_ready;
  wire [8*BYTES-1:0] w;
  tq1_decoder #(.BYTES(BYTES)) dec (
      .clk(clk), .rst(rst), .blk_valid(blk_valid), .blk_ready(blk_ready), .blk(blk), .blk_last(blk_last),
      .out_valid(w_valid), .out_ready(w_ready), .out_w(w), .out_last(w_last));
  // A beat goes in when both its digits and its activations are there (core_ready is a register).
  assign w_ready = core_ready && x_valid;
  assign x_ready = core_ready && w_valid;
  ternary_acc #(.BYTES(BYTES), .ACC_W(ACC_W)) core (
      .clk(clk), .rst(rst), .in_valid(w_valid && x_valid), .in_ready(core_ready), .in_w(w), .in_x(x),
      .in_last(w_last), .out_valid(out_valid), .out_ready(out_ready), .out_acc(out_acc));
endmodule
