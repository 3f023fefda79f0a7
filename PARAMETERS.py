# PARAMETERS.py: the one file a user edits. Every script reads it.
#
# Plain assignments only. Each value is checked when a script starts (type and
# allowed values); every script also takes overrides on the command line,
# e.g.  python scripts/4_trainSVM.py --datasetName=myData --svm_cvFolds=3
# and lists what it uses with --help. `python -m imgclass run` runs steps 1-5.
#
# Change the values freely. The comments are written from the declarations in
# imgclass/parameters.py: `python -m imgclass parameters --write-file` rewrites
# them (and adds parameters that are new) keeping your values.

# --- Data -----------------------------------------------------------------------------------------
# Images live in <rootDir>/images/<datasetName>/<class>/*.jpg; intermediate files go to
# <rootDir>/proc/<datasetName>/, plots and metrics to <rootDir>/results/<datasetName>/. A custom
# dataset is this one change.

# dataset folder name under <rootDir>/images/ (the default is the bundled demo set)
datasetName = "tuxpaintStamps"
# root of images/, proc/ and results/; a relative path is relative to the parameters file's folder
rootDir = "data"
# 'svm': fixed DNN features + linear SVM; 'dnn': the refined DNN itself; 'svmDnnRefined': SVM on
# the refined DNN's features; 'auto': the best of auto_classifiers x backbones on the training set
classifier = "svm"
# fraction of each class's images used for training
ratioTrainTest = 0.75
# 'filename': split individual files; 'subdir': keep each sub-folder of a class whole (all
# training or all test)
imagesSplitBy = "filename"
# seed of every random choice (split, CV folds, training)
randomSeed = 0

# --- Pretrained DNN and its refinement ------------------------------------------------------------
# rf_pretrainedModelFilename names a backbone: 'resnet18', 'resnet34', 'resnet50',
# 'efficientnet_lite0', any torchvision classification model (e.g. 'convnext_tiny', 'vit_b_16';
# docs/backbones.md), or a .pth state dict whose file name starts with one (e.g.
# resnet18-f37072fd.pth); 'smallcnn' trains from scratch only (rf_pretrained=False). Weights are
# looked for in resources/models/, then torch hub's cache, then downloaded; 'efficientnet_lite0'
# ships with its pip package (works offline). Refinement (classifier 'dnn' or 'svmDnnRefined')
# trains a new last layer, and the backbone unless rf_boFreezeWeights, on the training images.

# backbone: 'resnet18', 'resnet34', 'resnet50', 'efficientnet_lite0' (works offline), any
# torchvision classification model name (e.g. 'convnext_tiny', 'vit_b_16'; see docs/backbones.md),
# 'smallcnn' (a small CNN with no pretrained weights: with rf_pretrained=False), or a path to a
# .pth state dict whose file name starts with one; with classifier 'auto' also a list of them (on
# the command line comma-separated)
rf_pretrainedModelFilename = "resnet18"
# True: start from the backbone's pretrained (ImageNet) weights; False: random weights, trained
# from scratch in step 2 with rf_recipe 'original' (needed for 'smallcnn'; docs/from_scratch.md)
rf_pretrained = True
# network input width = height in pixels (the original's misspelling rf_inputResoluton is
# accepted)
rf_inputResolution = 224
# 'pad': scale the longer side and pad to a square with the mean colour (the whole image is kept);
# 'crop': scale the shorter side and centre-crop
rf_resizeMode = "pad"
# dropout before the new classification layer
rf_dropoutRate = 0.5
# refinement minibatch size
rf_mbSize = 16
# refinement epochs (0 = no refinement)
rf_maxEpochs = 45
# training images drawn per epoch (0 = all)
rf_maxTrainImages = 0
# learning rate per epoch; the last value repeats
rf_lrPerMb = [0.01] * 20 + [0.001] * 20 + [0.0001]
# SGD momentum
rf_momentumPerMb = 0.9
# L2 weight decay
rf_l2RegWeight = 0.0005
# refinement's optimizer: 'sgd' (with rf_momentumPerMb) or 'adam' (the Keras CNN tutorial's, for
# training from scratch; wants rates near 0.001); both with rf_l2RegWeight
rf_optimizer = "sgd"
# True: train only the new last layer, keep the backbone fixed
rf_boFreezeWeights = False
# True: draw every class equally often
rf_boBalanceTrainingSet = False
# the backbone learns at this fraction of rf_lrPerMb, the new last layer at the full rate (1 = one
# rate, as the original)
rf_backboneLrFactor = 1.0
# part of the TRAINING set held out to pick the best epoch (never the test set; 0 = keep the last
# epoch)
rf_validationFraction = 0.1
# training augmentation: scale and pad with a margin, then a random crop
rf_augRandomCrop = True
# training augmentation: random left-right flips; set False where a mirror image changes the class
# (digits, letters, left/right views; docs/refinement.md)
rf_augHorizontalFlip = True
# training augmentation: brightness/contrast/saturation jitter strength (0 = off)
rf_augColorJitter = 0.2

# --- Refinement recipe, test-time augmentation, automatic choice ----------------------------------
# rf_recipe = 'lpft' (the default) first fits the new last layer on the frozen network's features
# (the linear probe: seconds), then fine-tunes the whole network from it (rf_ft*); 'original' is
# the CNTK tutorial's recipe (rf_maxEpochs, rf_lrPerMb, rf_dropoutRate). Both stop early when the
# validation part of the training set stops improving. classifier = 'auto' tries every backbone in
# rf_pretrainedModelFilename (a name or a list) with each of auto_classifiers and keeps the best
# on the validation part of the training set; the test set is used once, at the end
# (docs/refinement.md).

# 'lpft': linear probe on frozen features, then fine-tune everything from it; 'original': the
# tutorial's recipe (random head, whole network from the start)
rf_recipe = "lpft"
# 'lpft': fine-tuning epochs, the length of the warm-up + cosine schedule (0 = the linear probe
# only)
rf_ftEpochs = 20
# 'lpft': the new last layer's peak learning rate (SGD with rf_momentumPerMb, rf_l2RegWeight; the
# backbone's is rf_ftBackboneLrFactor times it)
rf_ftLearningRate = 0.002
# 'lpft': the backbone learns at this fraction of rf_ftLearningRate (1 = the same rate as the last
# layer)
rf_ftBackboneLrFactor = 1.0
# 'lpft': epochs of linear learning-rate warm-up
rf_warmupEpochs = 1.0
# stop refining after this many epochs without a better validation result ('lpft': loss, then
# error; 'original': error, then loss; 0 = never; both recipes; 'lpft' not in the first half of
# rf_ftEpochs)
rf_earlyStopPatience = 5
# test-time augmentation, stored with the DNN by step 2 and applied wherever it runs (step 3,
# serving, batch scoring, Spark): 'none'; 'flip' (the mean of the features of the image and of its
# mirror; twice the compute); 'scales' (the mean over the image as it is and enlarged 1.5x; 3.25x
# the compute; pays most at low rf_inputResolution); 'flip+scales' (all four; 6.5x)
run_tta = "none"
# classifier 'auto': the modes tried with each backbone
auto_classifiers = ["svm", "dnn", "svmDnnRefined"]

# --- Linear SVM -----------------------------------------------------------------------------------
# C is chosen by cross-validation on the training set; the test set plays no part in the choice.

# SVM regularisation values C to choose from
svm_CVals = [1e-4, 1e-3, 1e-2, 0.1, 1, 10, 100]
# L2-normalise each feature vector before the SVM
svm_boL2Normalize = True
# stratified cross-validation folds on the training set (at most the smallest class's size)
svm_cvFolds = 5
# parallel jobs for the C search (-1 = all cores)
svm_nJobs = -1
# with more training images than this, C is chosen on a stratified sample of this many, then
# fitted once on all of them (and calibrated on a held-out 1/svm_cvFolds of this many); 0 = always
# cross-validate on all (cost and accuracy: BENCHMARKS.md)
svm_maxRowsForCV = 20000

# --- Running the DNN ------------------------------------------------------------------------------
# Where and how the network runs: step 3, refinement, serving and batch scoring.

# featurization batch size
run_mbSize = 32
# 'auto' (CUDA, then Apple MPS, then CPU), 'cpu', 'cuda', 'cuda:N', 'mps'
run_device = "auto"
# worker processes (-1 = auto, 0 = none): on a CPU, step 3 runs one per core (up to 8), each
# decoding and featurizing its own batches; with a GPU they only decode images (measurements:
# BENCHMARKS.md)
run_workers = -1
# numeric precision of the forward pass: 'auto' (bf16 autocast on CPUs with native bf16, i.e.
# AVX512-BF16 or AMX; fp16 on GPUs; else fp32), 'fp32', 'bf16', 'fp16' (their accuracy:
# BENCHMARKS.md)
run_precision = "auto"

# --- Evaluation -----------------------------------------------------------------------------------
# test images shown in the examples grid (wrong ones first)
eval_numExampleImages = 24

# --- Downloading images (script 0) ----------------------------------------------------------------
# TSV of 'label<TAB>url' lines to download into images/<datasetName>/ ('' = install the bundled
# demo images)
download_urlsFile = ""
# seconds each image download may take in all (connecting, every read, the whole body)
download_timeoutSeconds = 20.0
# downloaded images are shrunk so that the longer side is at most this many pixels
download_maxImageSide = 1000

# --- Scraping new images (scripts/scrapeImages.py) ------------------------------------------------
# Searches Bing Image Search for every '<item> <attribute>' and saves the top results in
# images/<datasetName>/<attribute>/ (guide: docs/scraping.md). The key is read from the
# environment variable BING_SEARCH_V7_SUBSCRIPTION_KEY, never from a file. Bing Search v7 was
# retired in August 2025: point bing_endpoint at a compatible service.

# Bing Image Search v7 endpoint, or a compatible one
bing_endpoint = "https://api.bing.microsoft.com/v7.0/images/search"
# things to search for; each is combined with every attribute
scrape_items = ["shirt", "pants", "dress", "skirt", "sweater", "scarf", "shoes"]
# the classes: query '<item> <attribute>', saved under images/<datasetName>/<attribute>/
scrape_attributes = ["striped", "dotted", "leopard"]
# TSV of 'label<TAB>query' lines used instead of items x attributes ('' = items x attributes)
scrape_queriesFile = ""
# search results downloaded per query (the top N)
scrape_imagesPerQuery = 50
# results asked for per search call (Bing allows at most 150)
scrape_countPerPage = 50
# Bing's adult-content filter
scrape_safeSearch = "Moderate"
# market of the search, e.g. 'en-US', 'de-DE' ('' = Bing chooses)
scrape_mkt = "en-US"
# Bing's imageType filter ('' = any)
scrape_imageType = "Photo"
# Bing's license filter ('' = no filter)
scrape_license = ""
# when an image itself cannot be downloaded, save Bing's (smaller) thumbnail of it instead
scrape_useThumbnails = False
# allow URLs (image search and step 0's URL lists) whose host is a private, loopback or link-local
# address (off: protects your network)
scrape_allowPrivateHosts = False
# seconds each search call and image download may take in all
scrape_timeoutSeconds = 20.0
# larger downloads are abandoned
scrape_maxBytes = 20_000_000
# rate limit: seconds between two requests to the same host, the search API included
scrape_minSecondsBetweenCalls = 0.5
# retries of a request answered 429 or 5xx (waits Retry-After, else 1, 2, 4, ... s)
scrape_maxRetries = 4

# --- Removing duplicates (scripts/removeDuplicates.py) --------------------------------------------
# Near-duplicates are moved to images/<datasetName>_duplicates/, never deleted; step 1 warns about
# near-duplicates that the split puts into both training and test.

# dhash size: a hash has dedup_hashSize x dedup_hashSize bits
dedup_hashSize = 16
# images whose dhashes differ in at most this many bits are near-duplicates (0 = identical hashes
# only; how the default was chosen: docs/scraping.md)
dedup_maxDistance = 16
# near-duplicates under different classes: 'keepOne' (like within a class), 'moveAll' (the label
# is ambiguous), 'report' (move none)
dedup_crossClass = "keepOne"

# --- Serving the model (scripts/6_deploy.py) ------------------------------------------------------
# Serves the trained model over HTTP: a REST API and a web page at / (guide: docs/deployment.md).
# If the environment variable IMGCLASS_API_KEY is set, requests need the header 'Authorization:
# Bearer <key>' (the key is never written to a file or a log).

# address the service listens on ('0.0.0.0' = every network interface, e.g. inside a container)
deploy_host = "127.0.0.1"
# TCP port of the service
deploy_port = 8000
# larger request bodies are refused with HTTP 413
deploy_maxRequestBytes = 20_000_000
# more images in one request are refused with HTTP 413
deploy_maxImages = 16
# labels returned per image by /predict (and shown by the web page)
deploy_topK = 5

# --- Service limits (scripts/6_deploy.py) ---------------------------------------------------------
# Bounds that keep hostile or slow clients from taking the service down or filling its memory:
# image size, concurrent decoding, connections and how long a client may take to send a request.
# Threat model: SECURITY.md; a reverse proxy in front: docs/deployment.md.

# largest image the service decodes, in pixels as decoded (a baseline JPEG counts at the reduced
# scale it is decoded at); larger ones get HTTP 400 before any pixel is decoded (the pipeline's
# files may have up to Pillow's 89.5 MP)
images_maxPixels = 40_000_000
# requests decoded and classified at the same time; the others wait their turn (each holds one
# decoded image at a time)
deploy_maxConcurrentDecodes = 2
# connections served at once; a request on one more is answered 503 (waiting requests hold their
# bodies in memory: at most this many times deploy_maxRequestBytes)
deploy_maxConnections = 32
# an idle kept-alive connection is closed after this many seconds
deploy_keepAliveSeconds = 5
# a request's line and headers must arrive within this many seconds of the connection opening (or
# of the previous response), else the connection is closed
deploy_headerTimeoutSeconds = 10.0
# a request body must arrive in full within this many seconds of its headers, else HTTP 408
deploy_bodyTimeoutSeconds = 60.0

# --- The service's client (scripts/6_callWebservice.py) -------------------------------------------
# service the client calls ('' = http://<deploy_host>:<deploy_port>)
deploy_url = ""
# image the client sends ('' = a bundled demo image)
deploy_clientImage = ""
# requests the client sends, to time the round trip
deploy_clientRepeats = 10

# --- Batch scoring (scripts/7_batchScore.py) ------------------------------------------------------
# Classifies every image under a folder into a CSV and a results database (SQLite by default,
# PostgreSQL the same way).

# folder whose images (recursively) are classified ('' = images/<datasetName>/; a relative path is
# from the current folder)
batch_inputDir = ""
# CSV written ('' = results/<datasetName>/batchScores.csv)
batch_outputCsv = ""
# results database the rows are added to: a SQLAlchemy URL (e.g.
# postgresql://user:password@host/dbname) or a SQLite file path ('' =
# results/<datasetName>/batchScores.sqlite)
batch_database = ""

# --- Labeling, least sure first (the /label and /results pages of scripts/6_deploy.py) ------------
# The service's labeling page queues the images of the unlabeled folder, and labeled images the
# model disagrees with, least sure first; each decision moves the file (never deletes it), is
# logged in images/<datasetName>_labeling.csv and can be undone. The results page browses batch
# scoring's database (guide: docs/labeling.md).

# folder under <rootDir>/images/ whose images wait for a label ('' = <datasetName>_unlabeled)
label_unlabeledFolder = ""
# labeled images queued too: 'disagree' (the model gives another class), 'all' (every one not yet
# confirmed, e.g. a scraped set), 'none'
label_reviewLabeled = "disagree"
# how unsure the model is: 'margin' (1 - the gap between the two most probable classes) or
# 'entropy' of the calibrated probabilities
label_uncertainty = "margin"
# images the labeling page holds at most at a time (the least sure)
label_queueSize = 200
# --key=value overrides for the page's retraining (python -m imgclass run with the service's
# parameters file), e.g. ['--rf_pretrainedModelFilename=efficientnet_lite0']
label_retrainArgs = []

# --- Running on Apache Spark (steps 3 and 7) ------------------------------------------------------
# With run_engine = 'spark', step 3 and batch scoring run the same featurizer and classifier on a
# Spark cluster, or on this machine's cores (guide: docs/spark.md). Needs pip install
# 'imgclass[spark]' (PySpark, PyArrow) and a Java runtime; nothing else changes.

# where steps 3 and 7 run: 'local' (this machine's processes) or 'spark' (a Spark session at
# spark_master)
run_engine = "local"
# Spark master: 'local[*]' (every core here), 'local[N]', 'spark://host:7077', 'yarn',
# 'k8s://https://host:443', a Spark Connect 'sc://host:15002', or '' (the one spark-submit or the
# running session set)
spark_master = "local[*]"
# tasks the image list is cut into (0 = one per core Spark offers, more so that none holds over
# 10,000 images)
spark_partitions = 0
# Spark settings as spark-submit's --conf takes them, 'key=value' (e.g.
# ['spark.executor.memory=8g']; on the command line comma-separated)
spark_conf = []
# Parquet table batch scoring on Spark writes ('' = results/<datasetName>/batchScores.parquet);
# batch_inputDir may be a folder, any URL Spark reads, or a Parquet table with a path (and
# content) column
spark_batchOutput = ""

# --- Run tracking and the model registry (MLflow) -------------------------------------------------
# Each run of steps 1-5 is one MLflow run (parameters, metrics, plots, the model), and each
# trained model a new version of a registered model (guide: docs/tracking.md). The default store
# is a SQLite file under rootDir and needs no server: compare runs with mlflow ui
# --backend-store-uri sqlite:///data/mlflow.db. A tracking failure is a warning, never a lost
# result.

# where runs and models are recorded: 'auto' = $MLFLOW_TRACKING_URI if set, else
# sqlite:///<rootDir>/mlflow.db with artifacts in <rootDir>/mlartifacts/; '' = no tracking; or a
# URI (sqlite:///path.db, http(s)://host:port of an MLflow server)
mlflow_trackingUri = "auto"
# MLflow experiment the runs go to ('' = datasetName)
mlflow_experimentName = ""
# registered model each trained model becomes a new version of ('' = imgclass-<datasetName>)
mlflow_registeredModelName = ""
# model scripts/6_deploy.py serves and scripts/7_batchScore.py applies: '' = the files steps 2-4
# wrote to proc/<datasetName>/; or an MLflow model: models:/<name>/<version>,
# models:/<name>@champion, runs:/<run id>/model, or a model folder
deploy_modelUri = ""
